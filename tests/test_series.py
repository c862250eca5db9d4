"""surrogate.series: the elementary functions that the compiled kernels and their torch
references evaluate alike."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from surrogate.series import EXP_LIMIT, exp64, exp_torch


@numba.njit(cache=True)
def _exp_all(x):  # noqa: ANN001, ANN202 - numba kernel
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = exp64(x[i])
    return out


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    ln2 = math.log(2.0)
    return np.concatenate([
        rng.uniform(-EXP_LIMIT, EXP_LIMIT, 200_000),
        rng.uniform(-40.0, 5.0, 200_000),                 # a pulse's ln |dN|
        np.arange(-1000, 1001) * ln2 / 2,                 # the reduction's edges
        np.nextafter(np.arange(-1000, 1001) * ln2 / 2, np.inf),
        [0.0, -0.0, 1e-300, -1e-300, 1.0, -1.0, EXP_LIMIT, -EXP_LIMIT]])


def test_compiled_exp_is_the_torch_exp_bit_for_bit():
    x = _values()
    compiled = _exp_all(x)
    reference = exp_torch(torch.from_numpy(x)).numpy()
    assert reference.dtype == np.float64
    assert np.array_equal(compiled.view(np.int64), reference.view(np.int64))
    # float32 arguments are taken exactly
    x32 = x.astype(np.float32)
    assert np.array_equal(exp_torch(torch.from_numpy(x32)).numpy(),
                          _exp_all(x32.astype(np.float64)))


def test_exp_is_within_two_ulps_and_clamps():
    x = _values()
    got = exp_torch(torch.from_numpy(x)).numpy()
    want = np.exp(np.clip(x, -EXP_LIMIT, EXP_LIMIT))
    ulps = np.abs(got - want) / np.spacing(want)
    assert float(ulps.max()) <= 2.0
    assert float(np.mean(ulps)) < 0.5
    assert float(exp_torch(torch.tensor([0.0]))[0]) == 1.0
    # beyond the limit the argument is clamped: finite, positive, never 0 or inf
    far = exp_torch(torch.tensor([-1e4, 1e4, -math.inf, math.inf], dtype=torch.float64))
    edge = exp_torch(torch.tensor([-EXP_LIMIT, EXP_LIMIT], dtype=torch.float64))
    assert far.tolist() == edge.tolist() * 2
    assert 0.0 < float(edge[0]) < 1e-300 and 1e300 < float(edge[1]) < math.inf
