"""Runs that must fail cleanly: divergence caught before the analog read.

Analog layers use the ``tiny`` calibration.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calibration.store import open_table
from training.analog import AnalogChip, AnalogLinear, NonFiniteValues
from training.optim import MixedPrecisionOptimizer


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


# -- 4. divergence is caught before the analog read ------------------------------------------
@pytest.mark.spice
def test_the_analog_read_refuses_non_finite_inputs(table):
    layer = AnalogLinear(12, 5, chip=AnalogChip(table, seed=0, read_noise=False))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(4, 12)
        x[2, 7] = bad
        with pytest.raises(NonFiniteValues, match="input of the analog layer .* NaN or inf"):
            layer(x)


@pytest.mark.spice
def test_a_non_finite_update_writes_no_device(table):
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(12, 5, chip=AnalogChip(table, seed=0, read_noise=False)))
    tiles = model[0].tiles
    opt = MixedPrecisionOptimizer(model, torch.optim.SGD(model.parameters(), lr=1.0))
    model(torch.rand(4, 12)).sum().backward()
    tiles.weight.grad[3, 1] = float("nan")
    state, writes = tiles.state.clone(), tiles.write_count.clone()
    with pytest.raises(NonFiniteValues, match="update of the analog weights 0.tiles"):
        opt.step()
    assert torch.equal(tiles.state, state) and torch.equal(tiles.write_count, writes)
