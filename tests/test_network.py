"""The compiled matrix iteration of the tiles' effective conductance (``surrogate.network``)
against its torch reference and ``calibration.irdrop``'s numpy iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration import irdrop
from surrogate.network import fast_effective_conductance
from surrogate.tile import _fast_torch, effective_conductance

#: line resistances (driver, row segment, column segment, virtual ground), ohm: heavy
#: enough that the lines lose a visible part of the read voltage
R = (40.0, 2.5, 2.5, 25.0)


def _tiles(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(shape, generator=gen, dtype=torch.float64) * 9e-5 + 1e-6
    g[..., 0, :, :] = 1e-4                    # one tile with every cell on top
    return g.to(dtype)


@pytest.mark.parametrize("shape", [(5, 16, 16), (2, 3, 8, 24), (4, 24, 8), (1, 1, 1)])
def test_the_kernel_is_the_torch_iteration(shape):
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 2e-6)):
        g = _tiles(shape, dtype)
        for iterations in (0, 1, 6):
            want = _fast_torch(g, R, iterations)
            got = fast_effective_conductance(g, R, iterations)
            assert got.dtype == dtype and got.shape == g.shape
            torch.testing.assert_close(got, want, rtol=tol, atol=0)


def test_the_kernel_is_the_numpy_iteration_and_the_cpu_path():
    g = _tiles((3, 12, 20), torch.float64, seed=1)
    numpy = irdrop.effective_conductance(g.numpy(), np.asarray(R), iterations=8,
                                         method="fast")
    np.testing.assert_allclose(fast_effective_conductance(g, R, 8).numpy(), numpy,
                               rtol=1e-12)
    # the surrogate's fast method runs the kernel on CPU tensors
    np.testing.assert_allclose(effective_conductance(g, R, iterations=8, method="fast").numpy(),
                               numpy, rtol=1e-12)


def test_no_tiles_and_no_iterations():
    empty = torch.zeros((0, 8, 8))
    assert fast_effective_conductance(empty, R, 6).shape == (0, 8, 8)
    g = _tiles((2, 8, 8), torch.float32)
    assert torch.equal(fast_effective_conductance(g, R, 0), g)
