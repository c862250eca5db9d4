"""Statistical programming (``surrogate.statistical``): the compiled draw against its torch
reference, bit for bit, and what its outcomes are made of."""

from __future__ import annotations

import pytest
import torch

from calibration.store import open_table
from surrogate.program_model import ProgrammingModel
from surrogate.statistical import StatisticalProgramming


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_draw_is_its_torch_reference(table, dtype):
    prog = ProgrammingModel.from_table(table, dtype=dtype)
    stat = StatisticalProgramming(table, prog)
    g = torch.Generator().manual_seed(1)
    lo, hi = prog.level_window_s
    n = 20_000
    targets = (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    # the window's ends, past them, and the surface's own targets (ties of the nearest)
    edges = torch.cat([torch.tensor([0.0, 1.0, lo, hi], dtype=dtype), stat.targets,
                       (stat.targets[:-1] + stat.targets[1:]) / 2])
    targets[:edges.numel()] = edges
    devices = prog.draw_devices((n,), generator=g)
    got = stat.program(targets, devices, generator=torch.Generator().manual_seed(5))
    want = stat.program_torch(targets, devices, generator=torch.Generator().manual_seed(5))
    assert got.state.dtype == want.state.dtype == dtype
    assert torch.equal(got.state, want.state)
    assert torch.equal(got.pulses, want.pulses) and torch.equal(got.success, want.success)
    # every outcome is one of the surface's cells, and the states lie in the devices' bounds
    d = prog.hw.device
    assert bool(torch.all(got.state >= d.n_min * devices.wd.to(dtype)))
    assert bool(torch.all(got.state <= d.n_max * devices.wd.to(dtype)))
    assert set(got.pulses.unique().tolist()) <= set(stat.pulses.unique().tolist())


def test_the_draws_follow_the_generator(table):
    prog = ProgrammingModel.from_table(table)
    stat = StatisticalProgramming(table, prog)
    lo, hi = prog.level_window_s
    targets = torch.full((5000,), (lo + hi) / 2, dtype=torch.float32)
    devices = prog.draw_devices((5000,), generator=torch.Generator().manual_seed(2))
    runs = [stat.program(targets, devices, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0].state, runs[1].state)
    assert not torch.equal(runs[0].state, runs[2].state)
