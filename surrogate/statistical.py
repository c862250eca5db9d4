"""Write outcomes drawn from ngspice's own write-and-verify runs, for models with millions
of devices (``--programming statistical``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from calibration.store import Table
from surrogate.program_model import Devices, ProgrammingModel

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
