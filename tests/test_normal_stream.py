"""The counter-based normals: their statistics, the compiled kernels against the torch
reference, and the stream's positions (its values depend on the seed and the requests
only)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from netlists.errors import ConfigError
from surrogate.normal_stream import NormalStream
from surrogate.normals import key_for, normals, normals_torch

REQUESTS = [5, 40, 17, 64, 3, 100, 64, 1, 200, 33]


def _drawn(stream: NormalStream, requests: list[int]) -> torch.Tensor:
    return torch.cat([stream.take((n,)) for n in requests])


# ---- the generator ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def many() -> np.ndarray:
    return normals(key_for(2024), 10, 1 << 21)                 # 4 M normals


def test_the_normals_have_the_moments_and_tails_of_a_standard_normal(many):
    n = many.size
    # standard errors for 4 M draws: mean 5e-4, variance 7e-4, skew 1.2e-3, kurtosis 2.4e-3;
    # the bounds are 5 of them
    assert abs(float(many.mean())) < 2.5e-3
    assert abs(float(many.var()) - 1.0) < 3.5e-3
    assert abs(float(stats.skew(many))) < 6e-3
    assert abs(float(stats.kurtosis(many))) < 1.2e-2
    for k in (1.0, 2.0, 3.0, 4.0):
        want = 2 * stats.norm.sf(k)
        got = float(np.mean(np.abs(many) > k))
        assert abs(got - want) < 5 * np.sqrt(want * (1 - want) / n) + 1e-7, k
    assert float(np.abs(many).max()) < 6.7                     # sqrt(64 ln 2) = 6.66
    assert stats.kstest(many[: 1 << 20], "norm").pvalue > 1e-3


def test_the_two_normals_of_a_counter_and_neighbouring_counters_are_uncorrelated(many):
    half = many.size // 2
    first, second = many[:half], many[half:]
    bound = 5 / np.sqrt(half)
    assert abs(float(np.corrcoef(first, second)[0, 1])) < bound
    assert abs(float(np.corrcoef(first[:-1], first[1:])[0, 1])) < bound
    assert abs(float(np.corrcoef(first**2, second**2)[0, 1])) < bound   # not just linear
    # Box-Muller: the pair's radius is Rayleigh, its angle uniform
    assert stats.kstest(np.hypot(first, second)[: 1 << 18], "rayleigh").pvalue > 1e-3
    angle = np.arctan2(second, first)[: 1 << 18]
    assert stats.kstest(angle, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3


def test_the_compiled_kernels_are_the_torch_reference_bit_for_bit():
    key = key_for(5, stream=3)
    for start in (0, 12345, (1 << 64) - 600):                  # the counter wraps at 2^64
        got = normals(key, start, 1000)
        counters = torch.arange(1000, dtype=torch.int64)
        signed = start - (1 << 64) if start >= 1 << 63 else start
        want = normals_torch(key, counters + signed).reshape(-1).numpy()
        assert np.array_equal(got, want), start


def test_keys_and_positions_give_unrelated_normals():
    a, b = normals(key_for(1), 0, 4096), normals(key_for(2), 0, 4096)
    c = normals(key_for(1, stream=1), 0, 4096)
    assert abs(float(np.corrcoef(a, b)[0, 1])) < 0.05
    assert abs(float(np.corrcoef(a, c)[0, 1])) < 0.05
    # a counter's normals are the same whichever request computes them
    shifted = normals(key_for(1), 1, 4096)
    assert np.array_equal(shifted[:4095], a[1:4096])
    assert np.array_equal(shifted[4096:8191], a[4097:])


# ---- the stream ----------------------------------------------------------------------------

def test_values_depend_on_the_seed_and_the_requests_only():
    assert torch.equal(_drawn(NormalStream(7), REQUESTS), _drawn(NormalStream(7), REQUESTS))
    assert not torch.equal(_drawn(NormalStream(7), REQUESTS),
                           _drawn(NormalStream(8), REQUESTS))
    s = NormalStream(3)
    block = s.take((4, 6))
    assert block.shape == (4, 6) and block.dtype == torch.float32
    # counter c gives entries i and i + p of a request of p counters
    want = torch.from_numpy(normals(key_for(3), 0, 12))
    assert torch.equal(block.reshape(-1), want)
    assert s.position == 12
    odd = s.take((5,))                                        # 3 counters, one normal unused
    assert torch.equal(odd, torch.from_numpy(normals(key_for(3), 12, 3))[:5])
    assert s.position == 15
    assert s.take((0, 3)).shape == (0, 3) and s.position == 15


def test_reserve_moves_past_counters_that_a_kernel_computes_itself():
    s = NormalStream(11)
    s.take((10,))
    assert s.reserve(100) == 5 and s.position == 105
    assert torch.equal(s.take((4,)), torch.from_numpy(normals(key_for(11), 105, 2)))
    with pytest.raises(ConfigError, match="pairs"):
        s.reserve(-1)


def test_a_saved_position_resumes_bit_for_bit():
    s = NormalStream(21)
    _drawn(s, REQUESTS[:4])
    state = s.state_dict()
    want = _drawn(s, REQUESTS[4:])
    t = NormalStream(999)                                      # another seed: the state wins
    t.load_state_dict(state)
    assert torch.equal(_drawn(t, REQUESTS[4:]), want)
    assert torch.equal(_drawn(copy.deepcopy(t), REQUESTS), _drawn(t, REQUESTS))
    u = pickle.loads(pickle.dumps(s))
    assert torch.equal(_drawn(u, REQUESTS), _drawn(s, REQUESTS))


def test_bad_seeds_and_states_are_refused():
    with pytest.raises(ConfigError, match="seed"):
        NormalStream(1.5)                                      # type: ignore[arg-type]
    old = {"seed": 3, "block": 1 << 20, "state": torch.zeros(5056, dtype=torch.uint8),
           "offset": 17}                                       # an earlier version's
    with pytest.raises(ConfigError, match="another generator.*bit for bit"):
        NormalStream(3).load_state_dict(old)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_stream_on_cuda_hands_out_the_cpu_values():
    cpu, gpu = NormalStream(5), NormalStream(5, device="cuda")
    assert torch.equal(_drawn(gpu, REQUESTS).cpu(), _drawn(cpu, REQUESTS))
