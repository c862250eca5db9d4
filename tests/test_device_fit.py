"""Fitting the compact model to pulse trains: the fast cell model against ngspice, the round
trip on the project's own data, a shape the model cannot follow, and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import circuitsim.cell_reference as cell_reference
from circuitsim.cell_reference import Bias, CellReference, TransistorCurves
from circuitsim.device import draw_variation, simulate_schedule
from circuitsim.device_fit import (DEFAULT_SCHEDULE, DETERMINED_BELOW, confirm_in_spice,
                                   device_block, fit_device, synthesize)
from circuitsim.measured import DeviceTrace, MeasuredData, read_measured
from netlists.config import load_config, load_surrogate_config
from netlists.errors import ConfigError
from netlists.programming import Pulse, render_pulse_deck

pytestmark = pytest.mark.spice

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "device-fit"
#: The parameters behind examples/device-fit/pulses.csv (examples/device-fit/truth.toml).
TRUTH = {"mobility_m2_vs": 2.3e-7, "n_min": 0.6, "nu_set_hz": 6e9, "nu_reset_hz": 9e9,
         "hop_distance_nm": 0.9, "p_window_set": 2.5, "p_window_reset": 1.3,
         "c2c_sigma": 0.08}
#: A second device, far from the first and from the defaults.
OTHER = {"mobility_m2_vs": 1.7e-7, "n_min": 0.45, "nu_set_hz": 3e9, "nu_reset_hz": 2e10,
         "hop_distance_nm": 0.82, "p_window_set": 1.6, "p_window_reset": 0.8,
         "c2c_sigma": 0.12}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_example_is_the_truth_file(chip):
    hw, _ = load_config(EXAMPLE / "truth.toml", base=chip)
    assert {k: getattr(hw.device, k) for k in TRUTH} == TRUTH


# ---- the fast cell model ------------------------------------------------------------------
def _schedule(hw):
    width = hw.drive.t_write_s
    return ([Pulse("set", 2.4, width, 2.0)] * 15 + [Pulse("reset", 3.0, width, 3.6)] * 15
            + [Pulse("set", 2.8, width, 2.0)] * 5 + [Pulse("reset", 3.0, width, 3.4)] * 10)


def test_cell_reference_follows_the_ngspice_pulse_deck(chip, runner):
    hw = device_block(chip, TRUTH)
    pulses = _schedule(hw)
    var = draw_variation(hw, len(pulses), 3)
    spice = simulate_schedule(hw, tuple(pulses), runner=runner, variation=var)
    keys = sorted({(Bias(1 if p.kind == "set" else -1, p.amplitude_v, p.gate_v), p.width_s)
                   for p in pulses})
    curves = TransistorCurves.solve(hw, [k[0] for k in keys] + [CellReference.read_bias(hw)],
                                    runner=runner)
    cell = CellReference(hw, curves)
    index = [[keys.index((Bias(1 if p.kind == "set" else -1, p.amplitude_v, p.gate_v),
                          p.width_s)) for p in pulses]]
    states = cell.trains(np.array(index), keys, np.array([spice.state[0]]), kd=np.array([var.kd]),
                         wd=np.array([var.wd]), kc=var.kc[None, :])
    fast = cell.read_conductance(states[0]) * 1e6
    err = fast - spice.conductance_us
    assert np.ptp(spice.conductance_us) > 25, "the trains cross the window"
    assert np.sqrt(np.mean(err ** 2)) < 0.06 and np.max(np.abs(err)) < 0.2, err


def test_rk_substeps_are_converged(chip, runner, monkeypatch):
    hw = device_block(chip, TRUTH)
    bias = Bias(-1, 3.0, 3.6)
    curves = TransistorCurves.solve(hw, [bias, Bias(1, 2.4, 2.0), CellReference.read_bias(hw)],
                                    runner=runner)
    keys = [(Bias(1, 2.4, 2.0), 1e-7), (bias, 1e-7)]
    index = np.array([[0] * 30 + [1] * 30])
    run = {}
    for steps in (2, 64):
        monkeypatch.setattr(cell_reference, "_SUBSTEPS", steps)
        cell = CellReference(hw, curves)
        run[steps] = cell.trains(index, keys, np.array([hw.device.n_min]), kd=np.ones(1),
                                 wd=np.ones(1))
    window = hw.device.n_max - hw.device.n_min
    assert np.max(np.abs(run[2] - run[64])) < 1e-3 * window


def test_cell_solution_is_smooth_in_the_parameters(chip, runner):
    """Finite differences of the fit need it: the read table must not carry the noise of a
    stale bracket (it once did, at 1e-5 of the conductance)."""
    curves = TransistorCurves.solve(chip, [CellReference.read_bias(chip)], runner=runner)
    steps = np.linspace(-1e-3, 1e-3, 11)
    g = np.array([CellReference(device_block(chip, {"mobility_m2_vs": 2e-7 * math.exp(h)}),
                                curves)._read for h in steps])
    second = np.abs(np.diff(g, 2, axis=0)).max(axis=0)
    first = np.abs(np.diff(g, axis=0)).mean(axis=0)
    assert np.all(second < 1e-3 * first)


# ---- pulses with their own gate voltage ---------------------------------------------------
def test_pulse_gate_voltage_reaches_the_deck_and_is_checked(chip):
    pulses = [Pulse("reset", 3.0, 1e-7, 3.55), Pulse("set", 2.0, 1e-7)]
    deck = render_pulse_deck(chip, pulses, n0=3.0)
    assert "3.55" in deck.text
    with pytest.raises(ConfigError, match=r"pulse 0: gate voltage 6.0 V is outside \[0, 5\]"):
        render_pulse_deck(chip, [Pulse("set", 2.0, 1e-7, 6.0)], n0=3.0)


def test_given_variation_is_the_drawn_one(chip, runner):
    pulses = (Pulse("set", 2.4, 1e-7),) * 4
    drawn = simulate_schedule(chip, pulses, runner=runner, seed=5)
    given = simulate_schedule(chip, pulses, runner=runner, seed=None,
                              variation=draw_variation(chip, 4, 5))
    np.testing.assert_allclose(given.conductance_us, drawn.conductance_us, rtol=1e-9)


# ---- round trip -----------------------------------------------------------------------------
def _check_round_trip(result, truth):
    assert result.warnings == []
    assert result.rms_us <= 0.25, "one-step residual"
    assert result.trains_rms_us <= 0.4 and result.spice_rms_us <= 0.4
    assert result.spice_vs_fast_rms_us <= 0.25
    for name, value in result.params.items():
        off = math.log(value / truth[name])
        if result.determined[name]:
            assert result.relative_error[name] < DETERMINED_BELOW
            assert abs(off) < math.log(1.1), (name, value)
        # every parameter within its stated error (with the few percent it leaves out)
        assert abs(off) < 3 * result.relative_error[name] + 0.06, (name, value)
    c2c = result.spread["c2c_sigma"]
    assert c2c["estimated"] and abs(c2c["value"] / truth["c2c_sigma"] - 1) < 0.3
    assert result.read_noise_us == pytest.approx(0.05, rel=0.25) and result.notes == []


def test_round_trip_of_a_second_device(chip, runner):
    hw = device_block(chip, OTHER)
    data = synthesize(hw, runner=runner, devices=3, seed=7, read_noise_us=0.05)
    result = confirm_in_spice(fit_device(data, chip, runner=runner), data, runner=runner)
    _check_round_trip(result, OTHER)
    assert result.devices[0]["pulses"] == sum(c for k, *_, c in DEFAULT_SCHEDULE if k != "read")


def test_without_repeated_reads_the_read_noise_is_said_unknown(chip, runner, tmp_path):
    from circuitsim.device_fit import write_fit

    schedule = [step for step in DEFAULT_SCHEDULE if step[0] != "read"]
    data = synthesize(device_block(chip, TRUTH), runner=runner, devices=1, seed=3,
                      schedule=schedule, read_noise_us=0.05)
    result = fit_device(data, chip, runner=runner)
    assert result.read_noise_us is None and "read noise is unknown" in result.notes[0]
    text = write_fit(tmp_path / "fit.toml", result, preset="chip").read_text()
    assert "# Note: no repeated reads" in text and "\n[surrogate]\n" not in text


def test_fit_command_on_the_example(tmp_path, chip):
    """The shipped example from the command line: the round trip, the JSON contract, the
    fitted TOML as a configuration and the plot."""
    out, plot = tmp_path / "fit.toml", tmp_path / "fit.png"
    proc = _cli("device", "fit", "--data", str(EXAMPLE / "pulses.csv"), "--out", str(out),
                "--plot", str(plot), "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["config"] == str(out) and payload["plot"] == str(plot)
    assert payload["devices"] == 4 and payload["pulses"] == 920
    for key in ("params", "rms_us", "max_us", "spice_rms_us", "trains_rms_us",
                "relative_error", "determined", "spread", "read_noise_us"):
        assert key in payload
    assert payload["rms_us"] <= 0.25
    determined = [n for n, d in payload["determined"].items() if d]
    assert {"mobility_m2_vs", "n_min", "hop_distance_nm"} <= set(determined)
    for name in determined:
        assert abs(payload["params"][name] / TRUTH[name] - 1) < 0.1, name
    hw, _ = load_config(out, base=chip)
    for name, value in payload["params"].items():
        assert getattr(hw.device, name) == pytest.approx(value, rel=1e-5)
    assert hw.device.c2c_sigma == pytest.approx(payload["spread"]["c2c_sigma"]["value"])
    noise = load_surrogate_config(out)
    assert noise.read_noise_unit == "us"
    assert noise.read_noise == pytest.approx(payload["read_noise_us"], rel=1e-5)
    assert plot.stat().st_size > 10_000


# ---- a shape the model cannot follow --------------------------------------------------------
def _filamentary(chip, devices=3, seed=0) -> MeasuredData:
    """Abrupt switching: each train holds its level, then jumps to the other end at once."""
    rng = np.random.default_rng(seed)
    kinds, amp, gate = [""], [math.nan], [math.nan]
    for kind, a, gt, count in DEFAULT_SCHEDULE:
        kinds += [kind] * count
        amp += [a if kind != "read" else math.nan] * count
        gate += [gt if kind != "read" else math.nan] * count
    traces = []
    for i in range(devices):
        g, level, left = [6.0], "low", 0
        for k in kinds[1:]:
            if k == "set" and level == "low" or k == "reset" and level == "high":
                left = left or int(rng.integers(3, 12))
                left -= 1
                if left == 0:
                    level = "high" if level == "low" else "low"
            g.append((38.0 if level == "high" else 6.0) + 0.05 * rng.standard_normal())
        width = np.where(np.isnan(amp), np.nan, 1e-7)
        traces.append(DeviceTrace(f"f{i}", tuple(kinds), np.array(amp), width, np.array(gate),
                                  np.array(g)))
    return MeasuredData(tuple(traces), "<filamentary>")


def test_abrupt_switching_is_reported_not_hidden(chip, tmp_path):
    from circuitsim.measured import write_measured

    path = tmp_path / "filament.csv"
    write_measured(path, _filamentary(chip, devices=2))
    proc = _cli("device", "fit", "--data", str(path), "--out", str(tmp_path / "f.toml"),
                "--json")
    assert proc.returncode == 1, proc.stderr
    assert "warning: the model does not follow this data" in proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["warnings"] and payload["rms_us"] > 1.0
    assert "# WARNING: the model does not follow" in (tmp_path / "f.toml").read_text()


# ---- bad input ------------------------------------------------------------------------------
def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("device,pulse,polarity,amplitude_v,width_s,gate_v,conductance_us\n"
                    + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_fewer_pulses_than_unknowns_are_refused(chip, runner, tmp_path):
    rows = ["d0,0,,,,,6"] + [f"d0,{k},set,2.4,1e-7,2.0,{6 + k}" for k in range(1, 6)]
    data = read_measured(_write(tmp_path / "short.csv", rows), chip)
    with pytest.raises(ConfigError, match=r"5 pulses cannot fit 7 unknowns"):
        fit_device(data, chip, runner=runner)
    reads = read_measured(_write(tmp_path / "reads.csv", ["d0,0,,,,,6", "d0,1,read,,,,6"]),
                          chip)
    assert reads.pulses == 0
    with pytest.raises(ConfigError, match="no set or reset pulse"):
        fit_device(reads, chip, runner=runner)


@pytest.mark.parametrize("params, match", [
    ("mobility_m2_vs,n_max", r"'n_max' cannot be fitted"),
    ("mobility_m2_vs,mobility_m2_vs", "each parameter once"),
])
def test_unknown_parameters_are_refused(chip, runner, params, match):
    data = _filamentary(chip, devices=1)
    with pytest.raises(ConfigError, match=match):
        fit_device(data, chip, runner=runner, params=params.split(","))


@pytest.mark.parametrize("rows, args, match", [
    (["d0,0,,,,,6", "d0,2,set,2.4,1e-7,2.0,7"], [], r"line 3, column 'pulse'"),
    (["d0,0,,,,,6e-6", "d0,1,set,2.4,1e-7,2.0,7e-6"], [], r"written in S or mS"),
    (["d0,0,,,,,6", "d0,1,set,2.4,1e-7,2.0,nan"], [], r"line 3, column 'conductance_us'"),
    (["d0,0,,,,,6", "d0,1,set,2.4,1e-7,2.0,7"], ["--params", "n_max"], "cannot be fitted"),
])
def test_fit_command_refuses_bad_input_and_writes_nothing(tmp_path, rows, args, match):
    data = _write(tmp_path / "bad.csv", rows)
    out = tmp_path / "fit.toml"
    proc = _cli("device", "fit", "--data", str(data), "--out", str(out), *args, "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert match.replace("\\", "") in proc.stderr or pytest.fail(proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_synthesize_command(tmp_path, chip):
    out = tmp_path / "syn.csv"
    proc = _cli("device", "synthesize", "--devices", "1", "--seed", "2", "--out", str(out),
                "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    data = read_measured(out, chip)
    assert payload["pulses"] == data.pulses == 230 and payload["reads"] == data.reads
    bad = _cli("device", "synthesize", "--devices", "0", "--out", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "--devices" in bad.stderr
    assert not (tmp_path / "x.csv").exists()
