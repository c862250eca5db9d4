"""Typed configuration: validation at construction, presets, TOML round trip."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from netlists.config import (ADCParams, ArrayParams, DeviceParams, DriveParams, HardwareConfig,
                             LevelsParams, SolverConfig, SurrogateConfig, TIAParams,
                             TransistorParams, WriteVerifyParams, load_config,
                             load_surrogate_config, preset, save_config)
from netlists.errors import CircuitSimError, ConfigError


def test_presets():
    assert (preset("chip").array.rows, preset("chip").array.cols) == (64, 64)
    assert (preset("paper-sim").array.rows, preset("paper-sim").array.cols) == (256, 64)
    assert preset("tiny").array.rows < 64


def test_paper_sim_is_sized_for_the_papers_column_range():
    hw = preset("paper-sim")
    lv = hw.levels
    assert (lv.count, lv.g_min_us, lv.g_max_us) == (16, 5.5, 38.5)
    assert lv.g_max_us / lv.g_min_us == pytest.approx(7.0)          # on/off 7
    # every cell on the top level, every row at the read voltage: linear within the rails
    top_plane_v = hw.array.rows * lv.g_max_us * 1e-6 * hw.drive.v_read_v * hw.tia.r_feedback_ohm
    assert top_plane_v < min(-hw.tia.v_rail_low_v, hw.tia.v_rail_high_v) \
        - 3 * hw.tia.v_clamp_knee_v
    # the ADC's full scale is 70 uA of column current, its noise 2 sigma = 0.549 uA
    assert hw.adc.v_full_scale_v / hw.tia.r_feedback_ohm == pytest.approx(70e-6)
    assert 2 * hw.adc.noise_v_rms / hw.tia.r_feedback_ohm == pytest.approx(0.549e-6)
    # the default read noise, 0.02 of the window, is the paper's 0.3 level of 16
    assert SurrogateConfig().read_noise_s((0.0, 1.0), 16) == pytest.approx(
        SurrogateConfig(read_noise=0.3, read_noise_unit="level").read_noise_s((0.0, 1.0), 16))


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'big'.*chip"):
        preset("big")


@pytest.mark.parametrize("cls, field, value, match", [
    (ArrayParams, "rows", 0, r"array.rows = 0 is out of range: allowed \[1, 4096\]"),
    (ArrayParams, "r_wire_row_ohm", -1.0, r"array.r_wire_row_ohm = -1.0 is out of range"),
    (ArrayParams, "rows", 6.5, r"array.rows = 6.5 must be a whole number"),
    (ADCParams, "bits", 1.0, "whole number"),
    (TIAParams, "r_feedback_ohm", 0.0, r"tia.r_feedback_ohm = 0.0 is out of range: allowed \(0"),
    (DeviceParams, "area_nm2", float("nan"), "must be finite"),
    (DeviceParams, "mobility_m2_vs", "fast", "must be a number"),
    (TransistorParams, "toxe_nm", 0.1, "transistor.toxe_nm"),
    (DriveParams, "v_read_v", 0.0, "drive.v_read_v"),
    (SolverConfig, "backend", "spectre", r"solver.backend = 'spectre' is not allowed"),
    (SolverConfig, "timeout_s", -1.0, "solver.timeout_s"),
])
def test_bad_values_fail_at_construction_naming_the_field(cls, field, value, match):
    with pytest.raises(ConfigError, match=match):
        cls(**{field: value})


def test_levels_below_two_are_rejected():
    # "levels < 2": an ADC needs at least 2 codes (1 bit) and inputs at least 1 bit.
    with pytest.raises(ConfigError, match="adc.bits"):
        ADCParams(bits=0)
    with pytest.raises(ConfigError, match="drive.input_bits"):
        DriveParams(input_bits=0)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="n_min.*must be below"):
        DeviceParams(n_min=5.0, n_max=4.0)
    with pytest.raises(ConfigError, match="n_init"):
        DeviceParams(n_init=10.0)
    with pytest.raises(ConfigError, match="v_set_min_v"):
        DriveParams(v_set_min_v=2.9, v_set_max_v=2.0)
    with pytest.raises(ConfigError, match="v_set_pulse_v"):
        DriveParams(v_set_pulse_v=3.2)
    with pytest.raises(ConfigError, match="t_edge_s"):
        DriveParams(t_edge_s=15e-9)
    with pytest.raises(ConfigError, match="validity"):
        HardwareConfig(device=DeviceParams(v_valid_max_v=2.5))


def test_config_error_is_a_value_error_and_a_circuitsim_error():
    with pytest.raises(ValueError):
        ArrayParams(cols=-3)
    assert issubclass(ConfigError, CircuitSimError)


def test_replace_validates_and_names_unknown_blocks_and_fields():
    hw = preset("chip").replace(array={"rows": 8})
    assert hw.array.rows == 8 and hw.array.cols == 64
    with pytest.raises(ConfigError, match="unknown configuration block 'arr'"):
        preset("chip").replace(arr={"rows": 8})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['row'\] in \[array\]"):
        preset("chip").replace(array={"row": 8})
    with pytest.raises(ConfigError, match="array.rows"):
        preset("chip").replace(array={"rows": -1})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("chip").array.rows = 3  # type: ignore[misc]


def test_toml_round_trip(tmp_path):
    hw = preset("paper-sim").replace(tia={"r_feedback_ohm": 7000.0}, device={"c2c_sigma": 0.2})
    solver = SolverConfig(backend="batch", retries=1)
    path = tmp_path / "hw.toml"
    save_config(path, hw, solver)
    hw2, solver2 = load_config(path)
    assert hw2 == hw and solver2 == solver
    assert not list(tmp_path.glob(".hw.toml.*")), "no temporary file left behind"


def test_partial_toml_overrides_a_base(tmp_path):
    path = tmp_path / "part.toml"
    path.write_text("[array]\nrows = 16\n[solver]\nretries = 0\n")
    hw, solver = load_config(path, base=preset("paper-sim"))
    assert (hw.array.rows, hw.array.cols) == (16, 64)
    assert solver.retries == 0


@pytest.mark.parametrize("text, match", [
    ("[array]\nrows = 0\n", "array.rows = 0"),
    ("[array]\nrows = 'many'\n", "must be a number"),
    ("[arrays]\nrows = 4\n", "unknown configuration block"),
    ("[solver]\nthreads = 4\n", r"unknown field\(s\) \['threads'\] in \[solver\]"),
    ("array = 3\n", r"\[array\] must be a table"),
    ("[array\n", "not valid TOML"),
])
def test_bad_toml_files_are_reported(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_toml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_validation_survives_python_O():
    # Checks are exceptions, not asserts: they hold under `python -O` too.
    import subprocess

    code = ("from netlists.config import ArrayParams\n"
            "try:\n    ArrayParams(rows=0)\nexcept ValueError:\n    print('rejected')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "rejected"


def test_levels_window_resolves_inside_the_cell_window():
    cell = (4.0e-6, 40.0e-6)
    full = LevelsParams()
    assert full.window(cell) == cell
    assert full.spacing(cell) == pytest.approx(36e-6 / 127)
    chip2 = LevelsParams(count=4, g_min_us=8.2, g_max_us=32.9)
    assert chip2.conductances(cell) == pytest.approx([8.2e-6, 16.4333e-6, 24.6667e-6, 32.9e-6],
                                                     rel=1e-4)
    with pytest.raises(ConfigError, match=r"levels window \[3, 32\.9\] uS must lie inside") as err:
        LevelsParams(count=4, g_min_us=3.0, g_max_us=32.9).window(cell)
    assert err.value.field == "levels.g_min_us"
    with pytest.raises(ConfigError, match="levels.g_max_us") as err:
        LevelsParams(g_max_us=50.0).window(cell)
    assert err.value.field == "levels.g_max_us"
    with pytest.raises(ConfigError, match=r"levels.g_min_us = 20.0 must be below"):
        LevelsParams(g_min_us=20.0, g_max_us=10.0)
    with pytest.raises(ConfigError, match=r"levels.count = 1 is out of range"):
        LevelsParams(count=1)
    assert LevelsParams().targets(32) == tuple(4 * k + 2 for k in range(32))
    assert LevelsParams(count=4).targets(32) == (0, 1, 2, 3)


def test_write_verify_limits_are_checked_once():
    assert WriteVerifyParams().max_pulses == 20 + 2 * 60 * 2
    with pytest.raises(ConfigError, match=r"write_verify.max_rounds = 0 is out of range"):
        WriteVerifyParams(max_rounds=0)
    with pytest.raises(ConfigError, match=r"must not exceed 65536") as err:
        WriteVerifyParams(max_pulses_per_phase=10000, max_rounds=4)
    assert err.value.field == "write_verify.max_pulses_per_phase"


def test_surrogate_config_states_read_noise_in_three_units():
    window = (1e-6, 7e-6)  # the paper's 16 levels over 1-7 uS: 0.4 uS a level
    assert SurrogateConfig().read_noise_s(window, 16) == pytest.approx(0.02 * 6e-6)
    paper = SurrogateConfig(read_noise=0.3, read_noise_unit="level")
    assert paper.read_noise_s(window, 16) == pytest.approx(0.3 * 0.4e-6)
    assert SurrogateConfig(read_noise=0.1, read_noise_unit="us").read_noise_s(window, 16) \
        == pytest.approx(0.1e-6)
    with pytest.raises(ConfigError, match=r"surrogate.read_noise_unit = 'sigma' is not allowed"):
        SurrogateConfig(read_noise_unit="sigma")
    with pytest.raises(ConfigError, match=r"surrogate.write_threshold = 0.0 is out of range"):
        SurrogateConfig(write_threshold=0.0)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['noise'\] in \[surrogate\]"):
        SurrogateConfig.from_dict({"noise": 1.0})


def test_new_blocks_round_trip_through_toml(tmp_path):
    hw = HardwareConfig().replace(levels={"count": 16, "g_min_us": 10.0},
                                  write_verify={"max_rounds": 3})
    sur = SurrogateConfig(read_noise=0.3, read_noise_unit="level", verify_reads=4)
    path = tmp_path / "hw.toml"
    save_config(path, hw, surrogate=sur)
    text = path.read_text()
    assert "g_max_us" not in text, "an unset window end is left out of the file"
    back, _ = load_config(path)
    assert back == hw and back.levels.g_max_us is None
    assert load_surrogate_config(path) == sur
    # the surrogate's block is not hardware: no calibration hashes it
    assert "surrogate" not in back.to_dict() and "read_noise" not in str(back.to_dict())
    plain = tmp_path / "plain.toml"
    plain.write_text("[array]\nrows = 8\n")
    assert load_surrogate_config(plain) == SurrogateConfig()


def test_the_shipped_lenet_chip_configuration():
    # the paper's on-chip LeNet: the chip with 4 levels over 8.2-32.9 uS, the threshold at
    # one weight step (w_max / 3 of the range 2 w_max)
    path = Path(__file__).resolve().parents[1] / "configs" / "lenet-chip.toml"
    hw, _ = load_config(path, base=preset("chip"))
    assert (hw.array.rows, hw.array.cols, hw.levels.count) == (64, 64, 4)
    assert (hw.levels.g_min_us, hw.levels.g_max_us) == (8.2, 32.9)
    assert dataclasses.replace(hw, levels=preset("chip").levels) == preset("chip")
    cell = (4.47e-6, 41.6e-6)               # the chip cell's read window (netlists/README)
    np.testing.assert_allclose(hw.levels.conductances(cell),
                               np.array([8.2, 16.433333, 24.666667, 32.9]) * 1e-6, rtol=1e-6)
    assert load_surrogate_config(path).write_threshold == pytest.approx(1 / 6)
