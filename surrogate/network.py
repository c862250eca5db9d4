"""The tiles' effective conductance by the matrix iteration, compiled: one pass per tile.

``calibration.irdrop``'s ``method="fast"`` iterates on a tile's effective conductance ``W``
(N rows x M columns)::

    W <- W + w (g (1 - L(W)) - W),   L(W) = W @ A + B @ W

where ``L`` is the voltage the lines lose at each cell (``A``: the segments two cells share
on their row, the driver included; ``B``: on their column, the TIA's virtual ground
included) and ``w = 2 / (2 + rho)`` the damping, ``rho`` the largest loss of ``g`` itself.
In torch (``surrogate.tile.effective_conductance``) a step is two GEMMs over all tiles:
``2 N M (N + M)`` multiply-adds per tile. The loss is a running sum along each line, so
here it is four prefix sums instead (``N M`` additions each)::

    (W @ A)[i, j] = r_drv R_i(0) + r_row sum_{m <= j} R_i(m),    R_i(m) = sum_{j' >= m} W[i, j']
    (B @ W)[i, j] = r_vg K_j(N - 1) + r_col sum_{m >= i} K_j(m),  K_j(m) = sum_{k <= m} W[k, j]

and each tile goes through all its iterations while it sits in the cache. The tiles are
shared out among the cores. :func:`fast_effective_conductance` runs it on CPU tensors; the
torch iteration stays the path on other devices and the reference the tests hold this one
to (the same arithmetic summed in another order).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["fast_effective_conductance"]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _iterate(g, r_drv, r_row, r_col, r_vg, iterations, out):  # noqa: ANN001 - numba kernel
    tiles, rows, cols = g.shape
    zero = g.dtype.type(0.0)
    one = g.dtype.type(1.0)
    two = g.dtype.type(2.0)
    for t in numba.prange(tiles):
        gt = g[t]
        w = out[t]
        w[:, :] = gt
        loss = np.empty((rows, cols), g.dtype)
        down = np.empty((rows, cols), g.dtype)
        up = np.empty(cols, g.dtype)
        damping = one
        for step in range(iterations):
            for i in range(rows):                      # along the rows, from the driver
                s = zero
                for j in range(cols - 1, -1, -1):
                    s += w[i, j]
                    loss[i, j] = s
                drive = r_drv * s
                acc = zero
                for j in range(cols):
                    acc += loss[i, j]
                    loss[i, j] = drive + r_row * acc
            for j in range(cols):                      # down the columns, to the TIA
                down[0, j] = w[0, j]
            for i in range(1, rows):
                for j in range(cols):
                    down[i, j] = down[i - 1, j] + w[i, j]
            for j in range(cols):
                up[j] = zero
            for i in range(rows - 1, -1, -1):
                for j in range(cols):
                    up[j] += down[i, j]
                    loss[i, j] += r_vg * down[rows - 1, j] + r_col * up[j]
            if step == 0:                              # the loss of g bounds the spectrum
                rho = zero
                for i in range(rows):
                    for j in range(cols):
                        if loss[i, j] > rho:
                            rho = loss[i, j]
                damping = two / (two + rho)
            for i in range(rows):
                for j in range(cols):
                    w[i, j] += damping * (gt[i, j] * (one - loss[i, j]) - w[i, j])


def fast_effective_conductance(g: torch.Tensor, r: tuple[float, float, float, float],
                               iterations: int) -> torch.Tensor:
    """``W`` (..., N, M) of conductances ``g`` (..., N, M) (a CPU tensor, float32 or
    float64) and line resistances ``r`` = (driver, row segment, column segment, virtual
    ground) in ohm, after ``iterations`` steps (module docstring)."""
    shape = g.shape
    flat = g.detach().reshape(-1, *shape[-2:]).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0] and iterations > 0:
        kind = flat.numpy().dtype.type
        _iterate(flat.numpy(), *(kind(v) for v in r), int(iterations), out.numpy())
    elif flat.shape[0]:
        out.copy_(flat)
    return out.reshape(shape)
