"""Retention: the compact model's zero-bias relaxation in ngspice, the ``retention`` surface,
its lookup (``surrogate.retention``), and evaluating a trained chip a time after programming.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from calibration.store import open_table
from calibration.surfaces.retention import SURFACE, RetentionGrid
from netlists.config import preset
from netlists.device import K_B_EV
from netlists.errors import ConfigError, TableError
from netlists.retention import render_retention_deck, state_vector
from surrogate.retention import Retention, parse_duration


def _exact(d, n0, seconds, temperature_k, kd=1.0):
    """The relaxation's closed form: N(t) = N_init - (N_init - N0) exp(-kd k(T) t)."""
    k = kd * d.nu_retention_hz * np.exp(-d.ea_retention_ev / (K_B_EV * temperature_k))
    return d.n_init - (d.n_init - np.asarray(n0)) * np.exp(-k * np.asarray(seconds))


@pytest.mark.spice
def test_unbiased_devices_relax_in_ngspice_as_the_model_says(runner):
    """Low states drift up, a state above N_init down, faster when hot; ngspice's transient
    (time-scaled) against the closed form of the model's relaxation equation."""
    hw = preset("paper-sim")
    d = hw.device
    states = np.array([0.63, 2.8, 5.33, 6.2])
    times = np.logspace(0, 9, 46)
    drift = {}
    for temp in (300.0, 358.0):
        deck = render_retention_deck(hw, np.tile(states, 2), times, temperature_k=temp,
                                     kd=np.repeat([1.0, 2.0], 4))
        res = runner.run(deck.text, name="retention")
        t = np.asarray(res["time"])
        for k in range(8):
            got = np.interp(times / deck.time_scale, t, np.asarray(res[state_vector(k)]))
            want = _exact(d, states[k % 4], times, temp, kd=1.0 if k < 4 else 2.0)
            # reltol 1e-6, trtol 1 (the deck): within 1e-3 of the 5.3 state units of drift
            assert np.max(np.abs(got - want)) < 1e-3, (temp, k)
        i24 = np.searchsorted(times, 86400.0)
        drift[temp] = np.interp(86400.0 / deck.time_scale, t,
                                np.asarray(res[state_vector(0)])) - states[0]
        assert times[i24] > 86400.0
    assert 0 < drift[300.0] < drift[358.0]
    # 24 h at 300 K: the lowest of the paper's 16 levels (spacing ~0.31) moves < 0.3 level
    assert 0.05 < drift[300.0] / 0.31 < 0.3


def test_relaxation_is_in_the_numpy_model_and_the_spice_text():
    from netlists.device import BulkSwitchingModel

    d = preset("chip").device
    m = BulkSwitchingModel(d)
    assert m.relaxation_rate(d.n_init, 300.0) == 0.0
    assert m.relaxation_rate(1.0, 300.0) > 0 > m.relaxation_rate(6.2, 300.0)
    assert m.relaxation_rate(1.0, 300.0, kd=2.0) == pytest.approx(
        2 * m.relaxation_rate(1.0, 300.0))
    # at zero bias the whole rate is the relaxation
    assert m.rate(0.0, 1.0, 0.0, 300.0) == pytest.approx(m.relaxation_rate(1.0, 300.0))
    assert f"{d.nu_retention_hz:.10g}" in m.library()
    off = BulkSwitchingModel(replace(d, nu_retention_hz=0.0))
    assert off.relaxation_rate(1.0, 400.0) == 0.0


def test_retention_deck_refuses_bad_input():
    hw = preset("tiny")
    with pytest.raises(ConfigError, match="times_s"):
        render_retention_deck(hw, [1.0], [0.0, 1.0], temperature_k=300.0)
    with pytest.raises(ConfigError, match="temperature"):
        render_retention_deck(hw, [1.0], [1.0], temperature_k=900.0)
    with pytest.raises(ConfigError, match="states"):
        render_retention_deck(hw, [-1.0], [1.0], temperature_k=300.0)
    with pytest.raises(ConfigError, match="temperatures_k"):
        RetentionGrid(temperatures_k=(358.0, 300.0))
    with pytest.raises(ConfigError, match="t_max_s"):
        RetentionGrid(t_min_s=10.0, t_max_s=1.0)


@pytest.mark.spice
def test_retention_surface_round_trip(runner):
    """The surface solved in ngspice holds the model's relaxation at its grid points, and
    its spread columns are the nominal device at kd times the time."""
    hw = preset("tiny")
    grid = RetentionGrid(temperatures_k=(300.0, 358.0), states=5, points_per_decade=3)
    points = SURFACE.points(hw, grid)
    data = SURFACE.assemble(hw, grid, points, [SURFACE.solve(hw, grid, p, runner)
                                               for p in points])
    n0 = data.axes["initial_state"].data
    times = data.axes["time"].data
    state = data.datasets["state"].data
    for k, temp in enumerate(grid.temperatures_k):
        want = _exact(hw.device, n0[:, None], times[None, :], temp)
        assert np.max(np.abs(state[k] - want)) < 1e-3
        for q, kd in enumerate(data.attrs["spread_kd"]):
            want = _exact(hw.device, n0[:, None], times[None, :], temp, kd=kd)
            assert np.max(np.abs(data.datasets["state_spread"].data[k, ..., q] - want)) < 1e-3
    np.testing.assert_array_equal(state[:, :, 0], np.broadcast_to(n0, (2, 5)))


def test_lookup_follows_the_surface_between_its_points(tiny_calibration):
    table = open_table(tiny_calibration)
    d = table.hardware().device
    ret = Retention(table)
    s = torch.tensor([0.63, 2.8, 5.33, 6.2], dtype=torch.float64)
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.equal(ret.after(s, ones, 0.0, 300.0), s)
    for seconds in (60.0, 7200.0, 86400.0):     # between calibrated times, at 300 K
        got = ret.after(s, ones, seconds, 300.0).numpy()
        want = _exact(d, s.numpy(), seconds, 300.0)
        drift = np.abs(want - s.numpy())
        # log-linear in time: within 1% of the drift on the tiny grid (4 times a decade)
        assert np.all(np.abs(got - want) <= 0.01 * drift + 1e-6), seconds
    # between calibrated temperatures: the nearest one at the time the model's rate shifts
    for temp in (315.0, 344.0):
        got = ret.after(s, ones, 3600.0, temp).numpy()
        want = _exact(d, s.numpy(), 3600.0, temp)
        assert np.all(np.abs(got - want) <= 0.01 * np.abs(want - s.numpy()) + 1e-6), temp
    # kd: a device with kd = 2 drifts as the nominal one in twice the time
    fast = ret.after(s, 2 * ones, 7200.0, 300.0)
    assert torch.allclose(fast, ret.after(s, ones, 14400.0, 300.0))
    # float32 states on their own dtype
    assert ret.after(s.float(), ones.float(), 3600.0, 330.0).dtype == torch.float32


def test_lookup_refuses_what_is_not_calibrated(tiny_calibration, tmp_path):
    table = open_table(tiny_calibration)
    ret = Retention(table)
    s, ones = torch.tensor([1.0]), torch.ones(1)
    with pytest.raises(ConfigError, match="outside the retention surface"):
        ret.after(s, ones, 3600.0, 500.0)
    with pytest.raises(ConfigError, match="finite number >= 0"):
        ret.after(s, ones, -1.0, 300.0)
    with pytest.raises(ConfigError, match="beyond"):
        ret.after(s, ones, 1e11, 300.0)
    with pytest.raises(TableError, match="outside the calibrated range"):
        ret.after(torch.tensor([50.0]), ones, 3600.0, 300.0)
    from calibration.store import write_table

    bare = tmp_path / "bare.h5"
    write_table(bare, surfaces={"cell_read": table.surface("cell_read")},
                attrs={"content_hash": "x"})
    with pytest.raises(TableError, match="calibrate --surfaces retention"):
        Retention(open_table(bare, expected_hash="x"))


@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("30min", 1800.0), ("2h", 7200.0),
                                           ("24h", 86400.0), ("1.5d", 129600.0),
                                           ("2w", 1209600.0), ("1y", 31557600.0),
                                           ("1e3", 1000.0), ("0", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, match", [("-2h", "negative"), ("2 lightyears", "unit"),
                                         ("h", "unit"), ("5000y", "beyond"), ("", "unit")])
def test_bad_durations(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_duration(text)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=500)


def test_evaluate_after_a_day_and_a_year(tiny_calibration, digits, tmp_path):
    """A mixed-trained chip a day and a year after programming: the JSON names the time and
    the temperature; the drift moves the devices (the accuracy may move); bad input is
    refused with a message and exit code 2."""
    from training.trainer import TrainConfig, evaluate, train

    table = open_table(tiny_calibration)
    cfg = TrainConfig(model="lenet", dataset=f"mnist:{digits}", epochs=1, batch_size=32,
                      lr=3e-3, read_noise=False)
    res = train(cfg, out=tmp_path / "run", table=table)
    now = evaluate(res.checkpoint, f"mnist:{digits}", table=table)
    day = evaluate(res.checkpoint, f"mnist:{digits}", table=table, after_s=86400.0)
    assert day["after_s"] == 86400.0 and day["temperature_k"] == 300.0
    assert abs(day["test_accuracy"] - now["test_accuracy"]) <= 0.1
    ev = _cli("evaluate", "--checkpoint", str(res.checkpoint), "--dataset", f"mnist:{digits}",
              "--table", str(tiny_calibration), "--after", "1y", "--temperature", "358",
              "--json")
    assert ev.returncode == 0, ev.stderr
    out = json.loads(ev.stdout.strip().splitlines()[-1])
    assert out["after_s"] == pytest.approx(31557600.0) and out["temperature_k"] == 358.0
    assert 0.0 <= out["test_accuracy"] <= 1.0
    for args, message in ((["--after=-3h"], "negative"),
                          (["--after", "24h", "--temperature", "900"], "outside"),
                          (["--temperature", "330"], "--after")):
        bad = _cli("evaluate", "--checkpoint", str(res.checkpoint), "--dataset",
                   f"mnist:{digits}", "--table", str(tiny_calibration), *args, "--json")
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
    flt = train(replace(cfg, mode="float"), out=tmp_path / "float")
    with pytest.raises(ConfigError, match="--fresh-chip"):
        evaluate(flt.checkpoint, f"mnist:{digits}", after_s=3600.0)


@pytest.mark.spice
def test_device_retention_command(tmp_path):
    """`circuitsim device retention`: the levels' conductances over time in ngspice; the
    lowest level drifts up more than the top one; a plot; bad levels refused."""
    plot = tmp_path / "levels.png"
    res = _cli("device", "retention", "--preset", "paper-sim", "--levels", "0,15",
               "--hours", "24", "--plot", str(plot), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["levels"] == [0, 15] and out["temperature_k"] == 300.0
    assert out["times_s"][0] == 0.0 and out["times_s"][-1] == pytest.approx(86400.0)
    low, top = out["drift_levels"]
    assert 0.05 < low < 0.5 and abs(top) < low
    assert plot.stat().st_size > 0
    bad = _cli("device", "retention", "--preset", "paper-sim", "--levels", "0,99", "--json")
    assert bad.returncode == 2 and "[0, 15]" in bad.stderr
    one = _cli("device", "retention", "--preset", "paper-sim", "--level", "3", "--hours",
               "2", "--json")
    assert one.returncode == 0 and json.loads(one.stdout.splitlines()[-1])["levels"] == [3]
    bad = _cli("device", "retention", "--preset", "paper-sim", "--levels", "a", "--json")
    assert bad.returncode == 2 and "--levels" in bad.stderr
