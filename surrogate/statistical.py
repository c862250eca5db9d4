"""Write outcomes drawn from ngspice's own write-and-verify runs, for models with millions
of devices (``--programming statistical``)."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from calibration.store import Table
from surrogate import program_model
from surrogate.program_model import Devices, ProgrammingModel, _as_dtype_of

__all__ = ["StatisticalProgramming", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """Where each written device ended: its state, the pulses it took, whether it
    reached its target."""

    state: torch.Tensor
    pulses: torch.Tensor
    success: torch.Tensor


class StatisticalProgramming:
    """Write outcomes drawn from the ``write_verify`` surface: ngspice's own runs of the
    procedure (each of its targets programmed from the floor in several Monte Carlo cells).

    A write towards ``g`` takes the surface's target nearest to ``g``, picks one of its cells
    at random and reproduces that cell's outcome relative to its target: reached conductance
    ``g + (g_reached - target)``, its pulse count and success. The device's state is then
    set to the state whose read conductance that is. Much faster than running the procedure
    (a few tensor operations for any number of devices, the mapping of a large model in
    seconds); it leaves out the device's own device-to-device draws and its starting level
    (every write is costed as one from the floor).
    """

    def __init__(self, table: Table, programmer: ProgrammingModel) -> None:
        wv = table.surface("write_verify")
        dev, dt = programmer.device, programmer.dtype
        self.targets = torch.as_tensor(wv.axes["target"].data, device=dev, dtype=dt)
        reached = torch.as_tensor(wv.datasets["g_reached"].data, device=dev, dtype=dt)
        self.offsets = reached - self.targets[:, None]                       # (targets, cells)
        self.pulses = torch.as_tensor(wv.datasets["pulses"].data, device=dev)
        self.success = torch.as_tensor(wv.datasets["success"].data, device=dev).bool()
        self.programmer = programmer

    def program(self, targets: torch.Tensor, devices: Devices, *,
                generator: torch.Generator) -> Outcome:
        """The outcomes of writes towards ``targets`` (S, 1-D) of ``devices``; the cells are
        drawn from ``generator``. On the CPU one compiled pass (``_draw``), elsewhere
        :meth:`program_torch`: the same numbers."""
        if targets.device.type != "cpu" or not program_model._COMPILED:
            return self.program_torch(targets, devices, generator=generator)
        cell = torch.randint(0, self.offsets.shape[1], targets.shape, generator=generator,
                             device=targets.device)
        prog, d = self.programmer, self.programmer.hw.device
        kind = np.float32 if prog.dtype == torch.float32 else np.float64
        state = torch.empty(targets.shape, dtype=prog.dtype)
        pulses = torch.empty(targets.shape, dtype=self.pulses.dtype)
        success = torch.empty(targets.shape, dtype=torch.bool)
        _draw(_flat(targets.to(prog.dtype)), _flat(cell), _flat(devices.wd.to(prog.dtype)),
              self.targets.contiguous().numpy(), self.offsets.contiguous().numpy(),
              self.pulses.contiguous().numpy(), self.success.contiguous().numpy(),
              prog._tensors(targets.device)["g"].double().contiguous().numpy(),
              prog._g0, prog._gdx, kind(d.n_min), kind(d.n_max), _flat(state),
              _flat(pulses), _flat(success))
        return Outcome(state=state, pulses=pulses, success=success)

    def program_torch(self, targets: torch.Tensor, devices: Devices, *,
                      generator: torch.Generator) -> Outcome:
        """:meth:`program` in torch (any device; the reference of the compiled pass)."""
        # The nearest of the surface's (ascending) targets, without a devices x targets table.
        hi = torch.clamp(torch.searchsorted(self.targets, targets), 1, self.targets.numel() - 1)
        lo = hi - 1
        k = torch.where((targets - self.targets[lo]).abs() <= (self.targets[hi] - targets).abs(),
                        lo, hi)
        cell = torch.randint(0, self.offsets.shape[1], targets.shape, generator=generator,
                             device=targets.device)
        g = targets + self.offsets[k, cell]
        n = self.programmer.state_for(g)
        d = self.programmer.hw.device
        n = torch.minimum(torch.maximum(n, d.n_min * devices.wd), d.n_max * devices.wd)
        return Outcome(state=n, pulses=self.pulses[k, cell], success=self.success[k, cell])


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(-1).numpy()


@numba.njit(inline="always", cache=True)
def _left(sorted_, x):  # noqa: ANN001, ANN202 - compiled only
    """``torch.searchsorted(sorted_, x)``: the first index whose value is >= ``x``."""
    lo, hi = 0, sorted_.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _draw(targets, cells, wd, surface, offsets, pulses, success, g_table, g0, gdx, n_min,
          n_max, state, out_pulses, out_success):  # noqa: ANN001 - numba kernel
    """:meth:`StatisticalProgramming.program_torch` device by device, in its dtypes and
    order of operations: the nearest surface target, the drawn cell's offset, the state
    of that conductance (``ProgrammingModel._inverse``) within the device's bounds."""
    count = surface.shape[0]
    g_cells = g_table.shape[0] - 1
    for i in numba.prange(targets.shape[0]):
        x = targets[i]
        hi = min(max(_left(surface, x), 1), count - 1)
        lo = hi - 1
        k = lo if abs(x - surface[lo]) <= abs(surface[hi] - x) else hi
        c = cells[i]
        g = np.float64(x + offsets[k, c])
        j = min(max(_left(g_table, g) - 1, 0), g_cells - 1)
        f = (g - g_table[j]) / (g_table[j + 1] - g_table[j])
        n = _as_dtype_of(g0 + (j + f) * gdx, x)
        low, high = n_min * wd[i], n_max * wd[i]
        n = low if n < low else n
        state[i] = high if n > high else n
        out_pulses[i] = pulses[k, c]
        out_success[i] = success[k, c]
