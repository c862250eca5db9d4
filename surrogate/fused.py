"""The conversion of a layer's tile reads, fused: noise, ADC, pair differences and the digital
sum over tile rows in one pass over the tiles' accumulated voltages.

After the shortcut's GEMM (``surrogate.tile``), every tile column's front-end voltage ``D``
still goes through a chain of elementwise steps before it is a layer's output: its read and
ADC noise (one Gaussian each), the ADC's rounding and range, the difference of the two
columns of a weight's pair, and the sum over the tile rows, each tile scaled by its digital
factor. Done with one torch operation per step, that chain passes over ``D`` (tile rows x
columns x vectors: 64 times the layer's outputs for a 4,096-input layer) some ten times and
stores a Gaussian for every element. Here it is ONE pass: each pair's two normals are
computed where they are used from their counter (``surrogate.normals``), so nothing but the
layer's output is written.

For tile row ``t``, output row ``o`` (pair ``p`` of tile column ``c``: stacked columns ``j0
= 2 o`` and ``j1 = 2 o + 1``) and vector ``b`` (position ``b0 + b`` of ``n`` in the
read)::

    code_j = clamp(floor(d[t, j, b] + off[t, j] + sqrt(var[t, b] nscale[t, j] + adc2) z_j),
                   0, top)
    y[o, b] = sum_t scale[t, c] (code_j0 - code_j1)

with ``z_j0, z_j1`` the two normals of counter ``base + (t rows + o) n + b0 + b`` of the
stream's key (``rows`` output rows). Everything is in the ADC's LSB with the rounding shift
folded into ``off``. The same pass marks the vectors ``b`` whose read puts any column at the
top code (``saturated[b]``, before the clamp: ``floor(...) >= top``), what a chip's
controller sees when it manages the converter's range. :func:`pair_sums` runs the compiled
kernel on the CPU and :func:`pair_sums_torch` the same arithmetic in torch (CUDA; the
reference the tests hold the kernel to).

Before the GEMM, :func:`look_up` turns the 8-bit inputs into the GEMM's operand (their
values on the settling components) and sums their read-noise weights over each tile's
rows (the variance of every read of the tile row, ``var`` above) in one pass over the
inputs, where torch would gather both tables and reduce the second with a GEMV.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from surrogate.normals import _G, _U, mix, normals_torch, uniform_pair_normals

__all__ = ["pair_sums", "pair_sums_torch", "look_up", "look_up_torch"]

#: vectors per job of :func:`look_up`'s kernel
_LOOKUP_BLOCK = 256


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _look_up(q, luts, noise_lut, looked, sums):  # noqa: ANN001 - numba kernel
    tr, rows, n = q.shape
    rank = luts.shape[0]
    blocks = (n + _LOOKUP_BLOCK - 1) // _LOOKUP_BLOCK
    for job in numba.prange(tr * blocks):
        t = job // blocks
        b0 = (job % blocks) * _LOOKUP_BLOCK
        b1 = min(n, b0 + _LOOKUP_BLOCK)
        acc = np.zeros(b1 - b0, np.float32)
        for i in range(rows):
            row = q[t, i]
            for k in range(rank):
                lut = luts[k]
                out = looked[t, k * rows + i]
                for b in range(b0, b1):
                    out[b] = lut[row[b]]
            for b in range(b0, b1):
                acc[b - b0] += noise_lut[row[b]]
        sums[t, b0:b1] = acc


def look_up(q: torch.Tensor, luts: torch.Tensor, noise_lut: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMM operand of 8-bit inputs ``q`` (tr, R, B) int32 on the settling components
    ``luts`` (rank, levels) float32, ``looked[t, k R + i, b] = luts[k, q[t, i, b]]`` (tr,
    rank R, B), and the read noise's sums ``sums[t, b] = sum_i noise_lut[q[t, i, b]]`` (tr,
    B), in one compiled pass over ``q`` (CPU tensors)."""
    tr, rows, n = q.shape
    looked = torch.empty((tr, luts.shape[0] * rows, n), dtype=torch.float32)
    sums = torch.empty((tr, n), dtype=torch.float32)
    _look_up(q.contiguous().numpy(), _np(luts), _np(noise_lut), looked.numpy(), sums.numpy())
    return looked, sums


def look_up_torch(q: torch.Tensor, luts: torch.Tensor, noise_lut: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`look_up` in torch (any device; the sums in another order)."""
    flat = q.reshape(-1)
    looked = torch.cat([lut.index_select(0, flat).view(q.shape) for lut in luts], dim=-2)
    return looked, noise_lut.index_select(0, flat).view(q.shape).sum(-2)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _pair_sums(d, off, var, nscale, adc2, top, scale, key, base, n_all, b0, noisy,
               y, saturated):  # noqa: ANN001 - numba kernel
    tr, m, n = d.shape
    rows = m // 2
    per_tile = rows // scale.shape[1]
    zero = np.float32(0.0)
    for o in numba.prange(rows):
        c = o // per_tile
        j0 = 2 * o
        j1 = j0 + 1
        z0 = np.zeros(n, np.float32)
        z1 = np.zeros(n, np.float32)
        acc = np.zeros(n, np.float32)
        for t in range(tr):
            if noisy:
                first = base + _U((t * rows + o) * n_all + b0)
                for b in range(n):
                    g0, g1 = uniform_pair_normals(mix(key + (first + _U(b)) * _G))
                    z0[b] = np.float32(g0)
                    z1[b] = np.float32(g1)
            s = scale[t, c]
            o0, o1 = off[t, j0], off[t, j1]
            s0, s1 = nscale[t, j0], nscale[t, j1]
            d0, d1, v = d[t, j0], d[t, j1], var[t]
            for b in range(n):
                a = math.floor(d0[b] + o0 + math.sqrt(v[b] * s0 + adc2) * z0[b])
                e = math.floor(d1[b] + o1 + math.sqrt(v[b] * s1 + adc2) * z1[b])
                if a >= top or e >= top:
                    # every writer stores the same 1: the order of the threads is moot
                    saturated[b] = 1
                a = zero if a < zero else (top if a > top else a)
                e = zero if e < zero else (top if e > top else e)
                acc[b] += s * (a - e)
        y[o] = acc


def pair_sums(d: torch.Tensor, off: torch.Tensor, var: torch.Tensor, nscale: torch.Tensor,
              adc2: float, top: int, scale: torch.Tensor, *, key: int, base: int,
              n_all: int, b0: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` (rows, n) and ``saturated`` (n,) bool of the module docstring, by the compiled
    kernel (CPU tensors).

    ``d`` (tr, 2 rows, n), ``off`` and ``nscale`` (tr, 2 rows), ``var`` (tr, n) (any
    values without noise), ``scale`` (tr, tile columns); float32. ``noisy=False``: no
    noise (``z = 0``; the counters are not used)."""
    tr, m, n = d.shape
    y = torch.empty((m // 2, n), dtype=torch.float32)
    saturated = torch.zeros(n, dtype=torch.uint8)
    f32 = np.float32
    _pair_sums(_np(d), _np(off), _np(var), _np(nscale), f32(adc2), f32(top), _np(scale),
               _U(key), _U(base), n_all, b0, noisy, y.numpy(), saturated.numpy())
    return y, saturated.bool()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def pair_sums_torch(d: torch.Tensor, off: torch.Tensor, var: torch.Tensor,
                    nscale: torch.Tensor, adc2: float, top: int, scale: torch.Tensor, *,
                    key: int, base: int, n_all: int, b0: int, noisy: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_sums` in torch (any device; the same arithmetic in another order)."""
    tr, m, n = d.shape
    rows = m // 2
    x = d + off[..., None]
    if noisy:
        o = torch.arange(rows, device=d.device)
        t = torch.arange(tr, device=d.device)
        b = torch.arange(n, device=d.device)
        counters = (base + b0) + ((t[:, None, None] * rows + o[None, :, None]) * n_all
                                  + b[None, None, :])
        z = normals_torch(key, counters)                            # (2, tr, rows, n)
        z = torch.stack([z[0], z[1]], dim=-2).reshape(tr, m, n)     # j0, j1 interleaved
        x = x + torch.sqrt(var[:, None, :] * nscale[..., None] + adc2) * z
    x = x.floor_()
    saturated = (x >= top).view(-1, n).any(0)
    codes = x.clamp_(0, top).view(tr, scale.shape[1], -1, 2, n)
    diff = codes[..., 0, :] - codes[..., 1, :]                     # (tr, tc, P, n)
    return torch.einsum("tcpn,tc->cpn", diff, scale).reshape(rows, n), saturated
