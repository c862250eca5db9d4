"""The ``programming`` and ``write_verify`` calibration surfaces, their batch deck and the
write-and-verify controller, solved in ngspice.

Level spacing used below: 128 levels over the cell's read window (4.47-41.6 uS), i.e.
~0.29 uS; the write-and-verify tolerance is half of it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calibration.base import SurfaceData
from calibration.surfaces.programming import SURFACE as PROGRAMMING
from calibration.surfaces.programming import ProgrammingGrid
from calibration.surfaces.write_verify import SURFACE as WRITE_VERIFY
from calibration.surfaces.write_verify import WriteVerifyGrid
from circuitsim.device import draw_variation, simulate_schedule
from circuitsim.write_policy import WritePolicy
from circuitsim.write_verify import read_window, run_batch, write_verify
from netlists.config import HardwareConfig, preset
from netlists.errors import ConfigError
from netlists.programming import Pulse
from netlists.programming_batch import BatchCell, render_batch_deck

# A small programming grid: interior states (away from the window's bounds, where one
# direction cannot move), nominal and non-nominal gates, 16 jobs of 6 cells.
SMALL = ProgrammingGrid(polarities=(-1, 1), amplitudes_v=(2.2, 2.8), widths_s=(50e-9, 100e-9),
                        gates_v=(2.0, 3.0), state_fractions=(0.2, 0.6), replicas=3, seed=5)


def _solve_all(surface, hw, grid, runner):
    points = surface.points(hw, grid)
    results = [surface.solve(hw, grid, p, runner) for p in points]
    return points, results, surface.assemble(hw, grid, points, results)


def _check_surface_data(data: SurfaceData) -> None:
    """Every axis and dataset has a unit and a description; dims name axes in shape order."""
    for name, axis in data.axes.items():
        assert axis.data.ndim == 1 and axis.unit and axis.description, name
    for name, arr in data.datasets.items():
        assert arr.unit and arr.description, name
        dims = data.dims[name]
        assert all(d in data.axes for d in dims), (name, dims)
        assert arr.data.shape[:len(dims)] == tuple(data.axes[d].data.size for d in dims), name
        assert np.all(np.isfinite(arr.data)), name


# ---------------------------------------------------------------------------------------
# the batch deck (pure) and its round trip against the single-cell deck (ngspice)
# ---------------------------------------------------------------------------------------

def test_batch_deck_shares_drive_sources_between_identical_pulses(chip):
    cells = [BatchCell(n0=1.0, kind="set", amplitude_v=2.2),
             BatchCell(n0=2.0, kind="set", amplitude_v=2.2, kc=1.1),
             BatchCell(n0=3.0, kind="reset", amplitude_v=3.0),
             BatchCell(n0=4.0)]
    deck = render_batch_deck(chip, cells, width_s=100e-9)
    text = deck.text
    assert text.count("\nVbl") == 3  # set 2.2 V, reset 3 V, idle
    assert text.count("\nVkc") == 2  # kc = 1 and 1.1
    assert all(f"Xd{k} t{k} m{k}" in text for k in range(4))
    assert ".options method=gear" in text and " uic" in text and text.endswith(".end\n")
    assert deck.read_times_s.size == 2 and deck.pulse_window_s[1] - deck.pulse_window_s[0] \
        == pytest.approx(100e-9)


@pytest.mark.parametrize("cell, message", [
    (BatchCell(n0=9.0, kind="set", amplitude_v=2.0), "outside the device's window"),
    (BatchCell(n0=1.0, kind="set", amplitude_v=4.0), "v_valid_max_v"),
    (BatchCell(n0=1.0, kind="flip", amplitude_v=2.0), "kind"),
    (BatchCell(n0=1.0, kind="set", amplitude_v=2.0, kc=0.0), "kc"),
    (BatchCell(n0=1.0, kind="reset", amplitude_v=2.0, v_gate_v=7.0), "gate voltage"),
])
def test_batch_deck_rejects_bad_cells(chip, cell, message):
    with pytest.raises(ConfigError, match=message):
        render_batch_deck(chip, [cell], width_s=100e-9)


@pytest.mark.spice
def test_batch_cell_reproduces_the_single_cell_deck(runner, chip):
    """Round trip: a cell of the batch = the single-cell deck with the same pulse, n0 and
    variation (kc, kd, wd drawn from the same seed)."""
    cases = [(Pulse("set", 2.5, 100e-9), 2.0, 11), (Pulse("set", 2.2, 100e-9), 0.8, 12),
             (Pulse("reset", 3.0, 100e-9), 5.0, 13), (Pulse("reset", 2.0, 100e-9), 3.0, 14)]
    cells, singles = [], []
    for pulse, n0, seed in cases:
        var = draw_variation(chip, 1, seed)
        cells.append(BatchCell(n0=n0, kind=pulse.kind, amplitude_v=pulse.amplitude_v,
                               kc=float(var.kc[0]), kd=var.kd, wd=var.wd))
        singles.append(simulate_schedule(chip, (pulse,), runner=runner, n0=n0, seed=seed))
    cells.append(BatchCell(n0=1.5))  # an idle cell only read
    batch = run_batch(chip, cells, width_s=100e-9, runner=runner)
    for k, single in enumerate(singles):
        step_single = single.state[1] - single.state[0]
        step_batch = batch.state_after[k] - batch.state_before[k]
        assert abs(step_single) > 1e-3
        # Same equations, two integrations (single deck: trapezoidal; batch: Gear-2) under
        # ngspice's LTE control at reltol 1e-3: the steps agree to 0.5% (measured: 0.04%).
        assert step_batch == pytest.approx(step_single, rel=5e-3, abs=1e-7)
        # Reads: the single deck's trapezoidal read current rings by +-0.2% (see
        # netlists/programming_batch.py); 0.5% covers it.
        np.testing.assert_allclose(batch.g_after[k] * 1e6, single.conductance_us[1], rtol=5e-3)
        np.testing.assert_allclose(batch.g_before[k] * 1e6, single.conductance_us[0],
                                   rtol=5e-3)
    assert batch.state_after[-1] == pytest.approx(1.5, abs=1e-6)


# ---------------------------------------------------------------------------------------
# the programming surface
# ---------------------------------------------------------------------------------------

@pytest.mark.spice
def test_programming_surface_spread_and_direction(runner, chip):
    points, results, data = _solve_all(PROGRAMMING, chip, SMALL, runner)
    _check_surface_data(data)
    ds = data.datasets
    assert ds["dstate_mean"].data.shape == (2, 2, 2, 2, 2)
    assert ds["dg"].data.shape == (2, 2, 2, 2, 2, 3)
    set_, reset = ds["dstate_mean"].data[1], ds["dstate_mean"].data[0]
    # SET raises the state and the read conductance, RESET lowers them, everywhere inside
    # the window; a larger SET amplitude moves it more (common random numbers keep this
    # exact even with c2c spread).
    assert np.all(set_ > 0) and np.all(reset < 0)
    assert np.all(ds["dg_mean"].data[1] > 0) and np.all(ds["dg_mean"].data[0] < 0)
    assert np.all(set_[1] > set_[0])
    # c2c_sigma = 0.1 > 0: a spread wherever the pulse moves the state (log-normal rate
    # multiplier: a few percent of the step at least with 3 replicas)
    assert np.all(ds["dstate_std"].data > 1e-3 * np.abs(ds["dstate_mean"].data))
    assert np.all(ds["dg_std"].data > 1e-3 * np.abs(ds["dg_mean"].data))
    # read conductance of the states: increasing, inside the 4-42 uS window
    g_state = ds["g_state"].data
    assert np.all(np.diff(g_state) > 0) and 4e-6 < g_state[0] and g_state[-1] < 42e-6

    # reproducible: the same point solved again gives the same numbers (deterministic
    # ngspice; same seed, same draws)
    again = PROGRAMMING.solve(chip, SMALL, points[5], runner)
    for key in ("state_after", "g_after"):
        np.testing.assert_allclose(again[key], results[5][key], rtol=1e-12)
    # ... and another seed other numbers
    other = PROGRAMMING.solve(chip, dataclasses.replace(SMALL, seed=6),
                              PROGRAMMING.points(chip, dataclasses.replace(SMALL, seed=6))[5],
                              runner)
    assert not np.allclose(other["state_after"], results[5]["state_after"], rtol=1e-6)


@pytest.mark.spice
def test_programming_surface_without_c2c_has_no_spread(runner, chip):
    hw = chip.replace(device={"c2c_sigma": 0.0})
    grid = dataclasses.replace(SMALL, amplitudes_v=(2.5, 3.0), widths_s=(80e-9, 100e-9))
    _, _, data = _solve_all(PROGRAMMING, hw, grid, runner)
    ds = data.datasets
    # Identical cells at different places in one matrix: equal to rounding (measured
    # <= 2e-14 in N against steps of 1e-3 .. 3), i.e. no spread.
    for key in ("dstate", "dg"):
        mean = np.abs(ds[f"{key}_mean"].data)
        assert np.all(mean > 0)
        assert np.all(ds[f"{key}_std"].data <= 1e-9 * mean)


# ---------------------------------------------------------------------------------------
# write-and-verify
# ---------------------------------------------------------------------------------------

@pytest.mark.spice
def test_write_verify_reaches_mid_window_targets(runner, chip):
    window = read_window(chip, runner=runner)
    spacing = (window[1] - window[0]) / 127
    targets = window[0] + np.array([30, 64, 64, 100]) * spacing
    # tight settings: fine SET steps, generous caps and rounds
    policy = WritePolicy.of(chip.replace(write_verify={"max_rounds": 3, "set_step_v": 0.05,
                                                       "max_pulses_per_phase": 80}))
    res = write_verify(chip, targets, runner=runner, seed=3, window_s=window, policy=policy)
    assert res.tolerance_s == pytest.approx(spacing / 2)
    assert np.all(res.success)
    assert np.all(np.abs(res.g_reached - targets) <= res.tolerance_s)
    assert np.all(res.pulses > 0) and np.all(res.set_pulses > 0)
    assert np.all(res.pulses == res.set_pulses + res.reset_pulses + res.floor_pulses)
    assert np.all(res.floor_pulses == 0)  # cells start at their own floor
    assert res.kd[1] != res.kd[2]  # the same target, two devices

    # Round trip: replaying cell 1's pulses on the single-cell deck with its seed (same kd,
    # wd and per-pulse kc draws, see circuitsim/write_verify.py) lands on the same state.
    # Steps agree to ~0.05% each (Gear vs trapezoidal): over 30-80 pulses the final states
    # differ by <= 5e-4 in N (measured); 2e-3 is ~1/20 of a level (a level is ~0.045 in N).
    pulses = tuple(Pulse(kind, amp, chip.drive.t_write_s) for kind, amp in res.history[1])
    single = simulate_schedule(chip, pulses, runner=runner, n0=chip.device.n_min * res.wd[1],
                               seed=res.seeds[1])
    assert single.variation.kd == res.kd[1]
    assert single.state[-1] == pytest.approx(res.state_reached[1], abs=2e-3)


@pytest.mark.spice
def test_write_verify_runs_the_hardwares_policy(runner, chip):
    # 4 levels over part of the window: the tolerance and floor follow them; a policy
    # without a floor phase gives none even from the top of the window (where the adaptive
    # RESET works instead)
    hw = chip.replace(levels={"count": 4, "g_min_us": 8.2, "g_max_us": 32.9},
                      write_verify={"max_floor_pulses": 0, "max_rounds": 1})
    window = read_window(hw, runner=runner)
    spacing = (32.9e-6 - 8.2e-6) / 3
    targets = [8.2e-6 + spacing, 8.2e-6 + 2 * spacing, 32.9e-6]
    start = [hw.device.n_min, hw.device.n_min, hw.device.n_max]
    res = write_verify(hw, targets, runner=runner, seed=4, window_s=window,
                       start_states=start)
    assert res.tolerance_s == pytest.approx(0.5 * spacing)
    assert res.floor_s == pytest.approx(8.2e-6 + spacing)
    assert np.all(res.floor_pulses == 0) and np.all(res.rounds == 1)
    assert np.all(res.success[:2]) and res.reset_pulses[2] > 0
    assert np.all(np.abs(res.g_reached[:2] - targets[:2]) <= 0.5 * spacing)
    # the same cells under the policy given explicitly: the same outcome
    again = write_verify(chip, targets, runner=runner, seed=4, window_s=window,
                         start_states=start, policy=WritePolicy.of(hw))
    assert np.array_equal(again.g_reached, res.g_reached)
    assert again.history == res.history
    with pytest.raises(ConfigError, match="policy = .* must be a WritePolicy"):
        write_verify(chip, targets, runner=runner, seed=4, window_s=window,
                     policy=hw.write_verify)


@pytest.mark.spice
def test_write_verify_rejects_targets_outside_the_window(runner, chip):
    with pytest.raises(ConfigError, match=r"outside the cell's read window \[4\.\d+, 41\.\d+\] uS"):
        write_verify(chip, [20e-6, 60e-6], runner=runner, seed=0)
    with pytest.raises(ConfigError, match="outside the cell's read window"):
        write_verify(chip, [1e-6], runner=runner, seed=0, window_s=(4e-6, 40e-6))


@pytest.mark.spice
def test_write_verify_surface(runner, chip):
    grid = WriteVerifyGrid(target_levels=(20, 50), repeats=2, cells_per_job=3, seed=1)
    points, _, data = _solve_all(WRITE_VERIFY, chip, grid, runner)
    assert len(points) == 2  # 4 cells, 3 per job
    _check_surface_data(data)
    ds = data.datasets
    assert ds["g_reached"].data.shape == (2, 2) and ds["pulses"].data.shape == (2, 2)
    assert ds["g_reached_quantiles"].data.shape == (2, 3)
    assert np.all(ds["success_rate"].data == 1.0)
    assert np.all(ds["pulses_mean"].data > 0)
    assert np.all(np.abs(ds["g_reached"].data - data.axes["target"].data[:, None])
                  <= data.attrs["tolerance_s"])
    assert data.attrs["tolerance_s"] == pytest.approx(data.attrs["level_spacing_s"] / 2)


# ---------------------------------------------------------------------------------------
# grids (no simulator)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("surface", [PROGRAMMING, WRITE_VERIFY])
@pytest.mark.parametrize("name", ["tiny", "chip", "paper-sim"])
def test_presets_are_valid_deterministic_and_json_round_trip(surface, name):
    hw = preset(name)
    grid = surface.grid(name)
    again = surface.grid_type(**json.loads(json.dumps(dataclasses.asdict(grid))))
    assert again == grid
    points = surface.points(hw, grid)
    assert json.loads(json.dumps(points)) == points
    assert points == surface.points(hw, again)
    texts = surface.netlists(hw, grid)
    assert texts and all(t.rstrip().endswith(".end") for t in texts)


def test_unknown_preset_is_rejected():
    for surface in (PROGRAMMING, WRITE_VERIFY):
        with pytest.raises(ConfigError, match="unknown preset 'huge'"):
            surface.grid("huge")


@pytest.mark.parametrize("changes, message", [
    ({"amplitudes_v": (2.0,)}, r"programming\.amplitudes_v .* at least 2"),
    ({"amplitudes_v": (2.0, 1.8)}, "strictly increasing"),
    ({"widths_s": (-1e-7, 1e-7)}, r"programming\.widths_s holds -1e-07"),
    ({"gates_v": (2.0, 6.0)}, r"programming\.gates_v holds 6\.0"),
    ({"state_fractions": (0.5, 1.2)}, r"state_fractions holds 1\.2"),
    ({"polarities": (0, 1)}, "polarities"),
    ({"replicas": 1}, r"programming\.replicas = 1"),
    ({"seed": -1}, "seed"),
])
def test_bad_programming_grids_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        ProgrammingGrid(**changes)


def test_programming_grid_checked_against_the_hardware(chip):
    beyond = ProgrammingGrid(amplitudes_v=(2.0, 3.6))  # the model is valid up to 3.5 V
    with pytest.raises(ConfigError, match=r"3\.6 V, beyond .*\(device\.v_valid_max_v\)"):
        PROGRAMMING.points(chip, beyond)
    short = ProgrammingGrid(widths_s=(1e-9, 1e-7))  # shorter than two 1 ns edges
    with pytest.raises(ConfigError, match=r"widths_s holds 1e-09 .* drive\.t_edge_s"):
        PROGRAMMING.points(chip, short)


@pytest.mark.parametrize("changes, message", [
    ({"target_levels": (5,)}, "at least 2"),
    ({"target_levels": (-1, 5)}, "target_levels holds -1"),
    ({"target_levels": (9, 5)}, "strictly increasing"),
    ({"repeats": 1}, r"write_verify\.repeats = 1"),
    ({"targets": 1}, r"write_verify\.targets = 1"),
])
def test_bad_write_verify_grids_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        WriteVerifyGrid(**changes)


def test_write_verify_grid_targets_follow_the_levels():
    hw = HardwareConfig()
    assert WriteVerifyGrid().levels(hw) == tuple(4 * k + 2 for k in range(32))
    few = hw.replace(levels={"count": 16})
    assert WriteVerifyGrid().levels(few) == tuple(range(16))
    assert WriteVerifyGrid(targets=4).levels(few) == (2, 6, 10, 14)
    with pytest.raises(ConfigError, match=r"target_levels holds 16: .* \[0, 15\]"):
        WriteVerifyGrid(target_levels=(5, 16)).levels(few)
