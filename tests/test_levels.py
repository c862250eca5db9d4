"""The programmable levels end to end: a TOML's ``[levels]`` through the calibration (its
ngspice write-and-verify and array surfaces), the surrogate and its validation against
ngspice, to the weights the analog layers program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration.calibrate import calibrate
from calibration.store import open_table
from netlists.config import load_config, preset
from surrogate.validate import validate
from training.analog import AnalogChip, AnalogLinear

pytestmark = pytest.mark.spice

G_MIN, G_MAX = 8.2e-6, 32.9e-6          # the paper's on-chip 2-bit window


@pytest.fixture(scope="module")
def four_levels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("levels4")
    toml = folder / "levels4.toml"
    toml.write_text("[levels]\ncount = 4\ng_min_us = 8.2\ng_max_us = 32.9\n")
    hw, _ = load_config(toml, base=preset("tiny"))
    res = calibrate(hw, preset="tiny", out=folder, workers=2, progress=lambda d, t: None)
    return open_table(res.path, expected_hash=res.content_hash)


def test_the_calibration_programs_and_records_the_configured_levels(four_levels):
    hw = four_levels.hardware()
    assert (hw.levels.count, hw.levels.g_min_us, hw.levels.g_max_us) == (4, 8.2, 32.9)
    spacing = (G_MAX - G_MIN) / 3
    wv = four_levels.surfaces["write_verify"].attrs
    assert wv["n_levels"] == 4
    assert wv["level_spacing_s"] == pytest.approx(spacing)
    assert wv["tolerance_s"] == pytest.approx(0.5 * spacing)
    # ngspice's write-and-verify reached the 4 levels (measured: every target, 0.10 level
    # rms; the 128-level table's is 0.29 of its finer level)
    assert wv["success_rate_all"] >= 0.95
    assert wv["program_error_std_levels"] < 0.25
    # another level count is another table
    assert four_levels.attrs["content_hash"] != open_table(
        calibrate(preset("tiny"), preset="tiny", out=four_levels.path.parent, workers=2,
                  progress=lambda d, t: None).path).attrs["content_hash"]


def test_the_surrogate_holds_against_ngspice_on_the_configured_levels(four_levels):
    result = validate(four_levels, cases=3, seed=5, workers=2)
    # the cases are maps of the 4 levels: their conductances span the configured window
    assert result.level_g.shape == (4,)
    assert result.level_g[0] == pytest.approx(G_MIN, rel=0.02)
    assert result.level_g[-1] == pytest.approx(G_MAX, rel=0.02)
    assert {int(v) for c in result.cases for v in np.unique(c.levels)} <= {0, 1, 2, 3}
    summary = result.summary()
    assert summary["rms_lsb"] < 0.05 and summary["max_lsb"] < 0.2


def test_the_analog_layers_program_the_configured_levels(four_levels):
    chip = AnalogChip(four_levels, seed=0, read_noise=False)
    assert chip.levels == 4
    assert (chip.g_lo, chip.g_hi) == pytest.approx((G_MIN, G_MAX))
    torch.manual_seed(0)
    layer = AnalogLinear(8, 6, chip=chip, weight=torch.randn(6, 8) * 0.3).tiles
    g = layer.conductances().double()
    levels = chip.programmer.level_conductances().double()
    nearest = (g[..., None] - levels).abs().argmin(-1)
    miss = (g - levels[nearest]).abs()
    # write-and-verify ends each device within half a level of a level (a few may fail)
    assert float((miss <= chip.programmer.tolerance_s * 1.01).double().mean()) >= 0.9
    # each device's level is the one its weight asks for, and every level is used
    targets = layer.target_levels(layer.weight.detach())
    assert float((nearest == targets.long()).double().mean()) >= 0.9
    assert set(nearest.unique().tolist()) == {0, 1, 2, 3}
