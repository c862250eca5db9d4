"""The fused conversion (``surrogate.fused``): the compiled kernel against its torch
reference, and the fused read against the unfused codes with the same normals."""

from __future__ import annotations

import pytest
import torch

from calibration.store import open_table
from surrogate import fused
from surrogate.normal_stream import NormalStream
from surrogate.normals import key_for, normals_torch
from surrogate.tile import TileSurrogate


@pytest.fixture(scope="module")
def surrogate(tiny_calibration) -> TileSurrogate:
    return TileSurrogate(open_table(tiny_calibration))


def _operands(tr: int, tc: int, pairs: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    m = 2 * tc * pairs
    d = torch.rand(tr, m, n, generator=g) * 300 - 20               # past both ends
    off = torch.rand(tr, m, generator=g)
    var = torch.rand(tr, n, generator=g) * 3
    nscale = torch.rand(tr, m, generator=g) + 0.5
    return d, off, var, nscale


@pytest.mark.parametrize("noisy", [True, False])
def test_the_kernel_is_its_torch_reference(noisy):
    d, off, var, nscale = _operands(5, 3, 4, 37, seed=1)
    d[..., ::3] *= 0.5                      # these vectors stay below the top code
    kw = dict(key=key_for(9), base=1000, n_all=100, b0=20, noisy=noisy)
    ones = torch.ones(5, 3)
    got, got_sat = fused.pair_sums(d, off, var, nscale, 0.4, 255, ones, **kw)
    want, want_sat = fused.pair_sums_torch(d, off, var, nscale, 0.4, 255, ones, **kw)
    assert got.shape == (12, 37) and got_sat.shape == (37,) and got_sat.dtype == torch.bool
    assert torch.equal(got, want)                      # integer codes: the sums are exact
    assert torch.equal(got_sat, want_sat) and not bool(got_sat[::3].any())
    assert bool(got_sat.any())
    scales = torch.rand(5, 3, generator=torch.Generator().manual_seed(2)) + 0.5
    got, _ = fused.pair_sums(d, off, var, nscale, 0.4, 255, scales, **kw)
    want, _ = fused.pair_sums_torch(d, off, var, nscale, 0.4, 255, scales, **kw)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-4)     # float32 sums, other order


def test_the_kernel_draws_the_documented_counters():
    # one tile row, one pair, no signal: the codes' difference is the noise's, rounded
    tr, n = 2, 3000
    d = torch.full((tr, 2, n), 100.0)
    off = torch.zeros(tr, 2)
    var = torch.ones(tr, n)
    nscale = torch.full((tr, 2), 16.0)                     # sigma = 4 LSB
    y, saturated = fused.pair_sums(d, off, var, nscale, 0.0, 255, torch.ones(tr, 1),
                                   key=key_for(4), base=50, n_all=n, b0=0, noisy=True)
    assert not bool(saturated.any())                  # 100 +- 4 LSB is far from 255
    t = torch.arange(tr)[:, None]
    z = normals_torch(key_for(4), 50 + t * n + torch.arange(n))       # (2, tr, n)
    want = (torch.floor(100 + 4 * z[0]) - torch.floor(100 + 4 * z[1])).sum(0)
    assert torch.equal(y[0], want)
    assert float(y.std()) == pytest.approx(4 * 2 ** 0.5 * tr ** 0.5, rel=0.05)


class _Fixed(NormalStream):
    """A stream whose next request returns given normals (what the fused read computes)."""

    def __init__(self, noise: torch.Tensor) -> None:
        super().__init__(0)
        self.noise = noise

    def take(self, shape):
        assert tuple(shape) == tuple(self.noise.shape)
        return self.noise


def test_the_fused_read_is_the_codes_with_the_same_normals(surrogate):
    s = surrogate
    tr, tc, n = 3, 2, 50
    g = torch.Generator().manual_seed(6)
    lo, hi = s.window_s
    tiles = s.prepare(lo + (hi - lo) * torch.rand(tr, tc, s.rows, s.cols, generator=g))
    stacked, offset = tiles.stacked_columns()              # (tr, tc M + 1, R), (tr, tc M, 2)
    x = torch.randint(0, 256, (tr, s.rows, n), generator=g).float()
    scale = torch.ones(tr, tc)
    stream = NormalStream(33)
    ops = s.pair_operands(tiles)
    # the stacked operands in LSB, the rounding's half LSB in the offset: exactly
    m = stacked.shape[1] - 1
    assert torch.equal(ops.w, stacked[:, :m] * (1.0 / s.lsb_v))
    assert torch.equal(ops.noise, stacked[:, m:])
    assert torch.equal(ops.offset, offset[..., 0] * (1.0 / s.lsb_v) + 0.5)
    assert torch.equal(ops.noise_scale, offset[..., 1])
    got, saturated = s.pair_sums_columns(x, ops, scale, generator=stream)
    rows = tc * s.cols // 2
    assert got.shape == (rows, n) and stream.position == tr * rows * n
    # the normals the kernel used, laid out as the codes' (tr, M, n)
    counters = (torch.arange(tr)[:, None, None] * rows + torch.arange(rows)[None, :, None]) \
        * n + torch.arange(n)
    z = normals_torch(stream.key, counters)                         # (2, tr, rows, n)
    noise = torch.stack([z[0], z[1]], dim=-2).reshape(tr, 2 * rows, n)
    codes = s.codes_columns(x, stacked, offset, generator=_Fixed(noise))
    want = (codes[:, 0::2] - codes[:, 1::2]).sum(0)
    assert torch.equal(got, want)
    assert torch.equal(saturated, (codes >= s.top_code).any(1).any(0))
    quiet, _ = s.pair_sums_columns(x, ops, scale, generator=None)
    codes = s.codes_columns(x, stacked, offset)
    assert torch.equal(quiet, (codes[:, 0::2] - codes[:, 1::2]).sum(0))
    assert not torch.equal(quiet, got)


@pytest.mark.parametrize("rank", [1, 3])
def test_the_lookup_kernel_is_its_torch_reference(rank):
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 256, (4, 24, 600), generator=g, dtype=torch.int32)
    luts = torch.rand(rank, 256, generator=g)
    noise_lut = torch.rand(256, generator=g)
    looked, sums = fused.look_up(q, luts, noise_lut)
    want_looked, want_sums = fused.look_up_torch(q, luts, noise_lut)
    assert looked.shape == (4, rank * 24, 600) and sums.shape == (4, 600)
    assert torch.equal(looked, want_looked)
    assert torch.allclose(sums, want_sums, rtol=1e-6)             # float32 sums, other order
