"""The ``array`` (IR drop) and ``energy`` calibration surfaces, and ``calibration.irdrop``.

SPICE tests solve 8x8 tiles through ``points`` / ``solve`` / ``assemble`` with a plain
:class:`circuitsim.runner.Runner`, as a calibration worker would.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calibration.irdrop import (
    IRDropCoefficients,
    column_currents,
    effective_conductance,
    fit_coefficients,
    ideal_column_currents,
    line_loss,
)
from calibration.surfaces.array import SURFACE as ARRAY
from calibration.surfaces.array import ArrayGrid
from calibration.surfaces.energy import SURFACE as ENERGY
from calibration.surfaces.energy import EnergyGrid
from netlists.array import render_tile_deck
from netlists.config import preset
from netlists.errors import ConfigError

SMALL_ARRAY_GRID = ArrayGrid(train_tiles=2, held_out_tiles=2, extreme_tiles=True,
                             planes_per_tile=6, iterations=6)


def _calibrate(surface, hw, grid, runner):
    points = surface.points(hw, grid)
    results = [surface.solve(hw, grid, p, runner) for p in points]
    return surface.assemble(hw, grid, points, results)


def _tiny(**array):
    hw = preset("tiny")
    return hw.replace(array=array) if array else hw


# --------------------------------------------------------------------------------------
# calibration.irdrop against a dense nodal solve (no simulator)
# --------------------------------------------------------------------------------------

def _nodal_column_currents(g, v, r_drv, r_row, r_col, r_vg):
    """Column currents of the tile network by modified nodal analysis, one dense solve.

    Nodes: the row node of every cell, the column node of every cell, one TIA input per
    column (to ground through r_vg). The row source drives the first row node through
    r_drv + r_row (the driver and the first segment in series)."""
    n_rows, n_cols = g.shape
    nx = n_rows * n_cols
    size = 2 * nx + n_cols
    a = np.zeros((size, size))
    b = np.zeros(size)

    def link(p, q, cond):
        a[p, p] += cond
        a[q, q] += cond
        a[p, q] -= cond
        a[q, p] -= cond

    def row(i, j):
        return i * n_cols + j

    def col(i, j):
        return nx + i * n_cols + j

    for i in range(n_rows):
        for j in range(n_cols):
            link(row(i, j), col(i, j), g[i, j])
            if j:
                link(row(i, j - 1), row(i, j), 1 / r_row)
            if i < n_rows - 1:
                link(col(i, j), col(i + 1, j), 1 / r_col)
        a[row(i, 0), row(i, 0)] += 1 / (r_drv + r_row)
        b[row(i, 0)] += v[i] / (r_drv + r_row)
    for j in range(n_cols):
        link(col(n_rows - 1, j), 2 * nx + j, 1 / r_col)
        a[2 * nx + j, 2 * nx + j] += 1 / r_vg
    x = np.linalg.solve(a, b)
    return x[2 * nx:] / r_vg


def test_iteration_equals_a_nodal_solve_of_the_network():
    rng = np.random.default_rng(0)
    g = rng.uniform(4.5e-6, 41.6e-6, (5, 4))
    v = np.array([0.1, 0.0, 0.1, 0.1, 0.05])
    coeffs = (200.0, 30.0, 50.0, 5.0)   # large drops (rho ~ 0.2) so that errors show
    nodal = _nodal_column_currents(g, v, *coeffs)
    ours = column_currents(g, v, coeffs, iterations=12)
    # 12 damped steps shrink the error by (rho / (2 + rho))^12 ~ 1e-12.
    np.testing.assert_allclose(ours, nodal, rtol=1e-9)
    assert np.max(np.abs(ideal_column_currents(g, v) - nodal)) > 1e-3 * np.max(nodal)
    # Linear in the row voltages: the effective conductance matrix gives the same currents,
    # with more rows than columns (solved transposed, by reciprocity) and fewer.
    w = effective_conductance(g, coeffs, iterations=12)
    np.testing.assert_allclose(v @ w, nodal, rtol=1e-9)
    wt = effective_conductance(g[:3], coeffs, iterations=12)
    np.testing.assert_allclose(v[:3] @ wt, _nodal_column_currents(g[:3], v[:3], *coeffs),
                               rtol=1e-9)


def test_fast_effective_conductance_is_exact_on_a_uniform_tile_and_close_otherwise():
    coeffs = IRDropCoefficients.nominal(preset("chip"))
    g = np.full((16, 16), 41.6e-6)
    exact = effective_conductance(g, coeffs, iterations=10)
    fast = effective_conductance(g, coeffs, iterations=10, method="fast")
    np.testing.assert_allclose(fast, exact, rtol=1e-9)
    g = np.random.default_rng(1).uniform(4.5e-6, 41.6e-6, (16, 16))
    exact = effective_conductance(g, coeffs, iterations=10)
    fast = effective_conductance(g, coeffs, iterations=10, method="fast")
    # Error of the fast matrix iteration: a second-order term, ~1e-4 of g here.
    assert np.max(np.abs(fast - exact)) < 1e-4 * np.max(g)
    assert np.max(np.abs(exact - g)) > 1e-3 * np.max(g)


def test_line_loss_of_one_cell_is_its_path_resistance():
    rows, cols = 4, 3
    cur = np.zeros((rows, cols))
    cur[1, 2] = 1e-3
    loss = line_loss(cur, (10.0, 1.0, 2.0, 0.5))
    # Driver + 3 row segments + 3 column segments (rows 1..3 to the TIA) + virtual ground.
    assert loss[1, 2] == pytest.approx(1e-3 * (10.0 + 3 * 1.0 + 3 * 2.0 + 0.5))


def test_fit_recovers_the_coefficients_of_synthetic_data():
    rng = np.random.default_rng(2)
    g = rng.uniform(4.5e-6, 41.6e-6, (12, 8, 8))
    v = (rng.random((12, 8)) < rng.random((12, 1))) * 0.1
    truth = np.array([40.0, 3.0, 5.0, 1.0])
    target = column_currents(g, v, truth, iterations=10)
    fit = fit_coefficients(g, v, target, iterations=10)
    np.testing.assert_allclose(fit.coefficients.as_array(), truth, rtol=1e-4)


def test_bad_irdrop_arguments_are_rejected():
    g = np.full((2, 2), 1e-5)
    with pytest.raises(ConfigError, match="method"):
        effective_conductance(g, (0, 0, 0, 0), iterations=2, method="magic")
    with pytest.raises(ConfigError, match="iterations"):
        column_currents(g, np.zeros(2), (0, 0, 0, 0), iterations=-1)
    with pytest.raises(ConfigError, match="coefficients"):
        column_currents(g, np.zeros(2), (0, 0, 0), iterations=1)


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("surface", [ARRAY, ENERGY])
def test_preset_grids_points_and_netlists(surface):
    hw = preset("tiny")
    for name in ("tiny", "chip", "paper-sim"):
        grid = surface.grid(name)
        assert isinstance(grid, surface.grid_type)
        # A grid survives the JSON round trip a calibration worker gives it.
        again = surface.grid_type(**json.loads(json.dumps(dataclasses.asdict(grid))))
        assert again == grid
    grid = surface.grid("tiny")
    points = surface.points(hw, grid)
    assert points == surface.points(hw, grid)
    assert json.loads(json.dumps(points)) == points
    texts = surface.netlists(hw, grid)
    assert texts and all(t.rstrip().endswith(".end") for t in texts)
    with pytest.raises(ConfigError, match="unknown preset"):
        surface.grid("huge")


@pytest.mark.parametrize("make, field", [
    (lambda: ArrayGrid(train_tiles=0), "train_tiles"),
    (lambda: ArrayGrid(held_out_tiles=1.5), "held_out_tiles"),
    (lambda: ArrayGrid(planes_per_tile=1), "planes_per_tile"),
    (lambda: ArrayGrid(extreme_tiles="yes"), "extreme_tiles"),
    (lambda: ArrayGrid(iterations=0), "iterations"),
    (lambda: EnergyGrid(vmm_tiles=()), "vmm_tiles"),
    (lambda: EnergyGrid(vmm_tiles=("huge",)), "vmm_tiles"),
    (lambda: EnergyGrid(pulse_amplitudes_v=(2.0, 1.5)), "pulse_amplitudes_v"),
    (lambda: EnergyGrid(pulse_amplitudes_v=(-1.0,)), "pulse_amplitudes_v"),
    (lambda: EnergyGrid(pulse_initial_fractions=(0.5, 1.5)), "pulse_initial_fractions"),
    (lambda: EnergyGrid(seed=-1), "seed"),
])
def test_bad_grids_are_rejected(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_pulse_amplitudes_beyond_the_model_are_rejected():
    with pytest.raises(ConfigError, match="v_valid_max_v"):
        ENERGY.points(preset("tiny"), EnergyGrid(pulse_amplitudes_v=(2.0, 4.0)))


# --------------------------------------------------------------------------------------
# The array surface in ngspice
# --------------------------------------------------------------------------------------

@pytest.mark.spice
def test_without_wires_and_with_an_ideal_tia_the_representation_is_the_ideal_sum(runner):
    hw = _tiny(r_wire_row_ohm=0.0, r_wire_col_ohm=0.0, r_driver_ohm=0.0)
    hw = hw.replace(tia={"open_loop_gain": 1e9})
    data = _calibrate(ARRAY, hw, SMALL_ARRAY_GRID, runner)
    coeffs = data.datasets["coefficients_ohm"].data
    # With 0.1 V across 8 cells of <= 42 uS, 0.01 ohm would move a column by ~1e-5 LSB:
    # what is left is ngspice's own tolerance.
    assert np.all(np.abs(coeffs) < 0.01), coeffs
    stats = data.datasets["held_out_error_lsb"].data       # (model, statistic)
    assert stats[0, 2] < 1e-3        # the ideal crossbar is exact here ...
    assert stats[2, 2] < 1e-3        # ... and so is the fitted representation
    model = data.datasets["model_column_current_a"].data
    ideal = data.datasets["ideal_column_current_a"].data
    lsb = data.attrs["lsb_current_a"]
    assert np.max(np.abs(model - ideal)) / lsb < 1e-3


@pytest.fixture(scope="module")
def wired(runner):
    """Array surfaces of tiny tiles with 20 and 40 ohm wire segments."""
    return {r: _calibrate(ARRAY, _tiny(r_wire_row_ohm=r, r_wire_col_ohm=r), SMALL_ARRAY_GRID,
                          runner)
            for r in (20.0, 40.0)}


@pytest.mark.spice
def test_with_wire_resistance_the_representation_beats_the_ideal_model(wired):
    data = wired[20.0]
    stats = data.datasets["held_out_error_lsb"].data
    ideal_rms, fitted_rms = stats[0, 0], stats[2, 0]
    assert ideal_rms > 0.5               # the wires matter (a few LSB at 20 ohm per segment)
    assert fitted_rms < ideal_rms / 50   # measured ~1e-3 of the ideal model's error
    assert stats[2, 2] < 0.05            # and no held-out column is off by 0.05 LSB
    assert stats[3, 2] < 0.1             # the fast effective-conductance matrix too
    assert data.attrs["ideal_over_fitted_rms"] > 50
    # The fit finds the circuit's own resistances (to the cell's differential/chord ratio).
    fitted = data.datasets["coefficients_ohm"].data
    nominal = data.datasets["nominal_coefficients_ohm"].data
    np.testing.assert_allclose(fitted[:3], nominal[:3], rtol=0.05)


@pytest.mark.spice
def test_more_wire_resistance_gives_larger_fitted_coefficients(wired):
    low = wired[20.0].datasets["coefficients_ohm"].data
    high = wired[40.0].datasets["coefficients_ohm"].data
    assert high[1] > 1.8 * low[1] and high[2] > 1.8 * low[2]   # r_row, r_col double
    assert high[0] == pytest.approx(low[0], rel=0.1)            # the driver stays


@pytest.mark.spice
def test_array_surface_stores_the_raw_cases_and_is_storable(wired, tmp_path):
    from calibration.store import open_table, write_table

    data = wired[20.0]
    for key, arr in data.datasets.items():
        assert arr.unit and arr.description, key
    for key, arr in data.axes.items():
        assert arr.unit and arr.description, key
    held = data.datasets["case_held_out"].data.astype(bool)
    active = data.datasets["case_active_rows"].data
    assert held.any() and (~held).any()
    assert active.min() == 1 and active.max() == 8          # 1 row to all rows
    v = data.datasets["row_voltage_v"].data
    g = data.datasets["tile_conductance_s"].data[data.datasets["case_tile"].data]
    np.testing.assert_allclose(data.datasets["ideal_column_current_a"].data,
                               np.einsum("ci,cij->cj", v, g))
    w = data.datasets["effective_conductance_s"].data[data.datasets["case_tile"].data]
    np.testing.assert_allclose(np.einsum("ci,cij->cj", v, w),
                               data.datasets["model_column_current_a"].data, rtol=1e-6)
    write_table(tmp_path / "t.h5", surfaces={"array": data}, attrs={"content_hash": "x"})
    table = open_table(tmp_path / "t.h5", expected_hash="x")
    assert "array" in table.surfaces


# --------------------------------------------------------------------------------------
# The energy surface in ngspice
# --------------------------------------------------------------------------------------

SMALL_ENERGY_GRID = EnergyGrid(vmm_tiles=("floor", "top"), pulse_amplitudes_v=(2.0, 3.0),
                               pulse_initial_fractions=(0.0, 1.0))


@pytest.fixture(scope="module")
def energy(runner):
    hw = _tiny()
    points = ENERGY.points(hw, SMALL_ENERGY_GRID)
    results = [ENERGY.solve(hw, SMALL_ENERGY_GRID, p, runner) for p in points]
    return hw, points, results, ENERGY.assemble(hw, SMALL_ENERGY_GRID, points, results)


def _pwl_row_voltage(hw, x_i, t):
    """The row driver's voltage at times ``t``, rebuilt from the input code (LSB first)."""
    d = hw.drive
    pts_t, pts_v = [0.0], [0.0]
    for k in range(d.input_bits):
        level = d.v_read_v if (int(x_i) >> k) & 1 else 0.0
        pts_t += [k * d.t_bit_s + d.t_edge_s, (k + 1) * d.t_bit_s - d.t_edge_s,
                  (k + 1) * d.t_bit_s]
        pts_v += [level, level, 0.0]
    return np.interp(t, pts_t, pts_v)


@pytest.mark.spice
def test_vmm_energy_equals_the_integral_of_the_row_currents(energy, runner):
    hw, points, results, _ = energy
    case = next(i for i, p in enumerate(points) if p["kind"] == "vmm" and p["tile"] == "top")
    res = results[case]
    rows = hw.array.rows
    # Independently: the plain tile deck, with the row sources' currents saved by hand.
    head, end, tail = render_tile_deck(hw, res["states"], res["inputs"]).rpartition("\n.end")
    deck = head + "\n.save " + " ".join(f"i(vrow{i})" for i in range(rows)) + end + tail
    out = runner.run(deck, name="energy_check")
    t = out["time"]
    power = sum(-_pwl_row_voltage(hw, res["inputs"][i], t) * out[f"i(vrow{i})"]
                for i in range(rows))
    expected = float(np.sum(0.5 * (power[1:] + power[:-1]) * np.diff(t)))
    # Same transient, same time points, the PWL rebuilt exactly: agreement to rounding.
    assert float(res["row_driver_energy_j"]) == pytest.approx(expected, rel=1e-6)
    assert abs(float(res["clock_energy_j"])) < 1e-6 * expected
    assert abs(float(res["wordline_energy_j"])) < 0.05 * expected


@pytest.mark.spice
def test_vmm_energy_scales_with_conductance(energy):
    hw, points, results, data = energy
    d = hw.drive
    # Ideal crossbar energy: v_read^2 sum_i G_i (set bits of x_i) t_on, with t_on the flat
    # top plus the two edges' integral of v^2 (t_edge / 3 each).
    t_on = d.t_bit_s - 2 * d.t_edge_s + 2 * d.t_edge_s / 3
    ratios = []
    for p, r in zip(points, results):
        if p["kind"] != "vmm":
            continue
        ones = np.array([bin(int(v)).count("1") for v in r["inputs"]])
        ideal = d.v_read_v ** 2 * t_on * float(np.sum(r["conductance_s"].sum(1) * ones))
        ratios.append(float(r["row_driver_energy_j"]) / ideal)
    # IR drop and the cells' read nonlinearity keep each within a few % of the ideal.
    assert all(0.9 < q < 1.02 for q in ratios), ratios
    e = data.datasets["vmm_row_driver_energy_j"].data
    g = data.datasets["vmm_mean_conductance_s"].data
    assert e[1] > 4 * e[0] and g[1] > 8 * g[0]          # top vs floor map
    total = data.datasets["vmm_energy_j"].data
    per_mac = data.datasets["vmm_energy_per_mac_j"].data
    np.testing.assert_allclose(per_mac, total / (hw.array.rows * hw.array.cols))
    # the row drivers' energy is the crossbar's plus their own resistance's loss
    np.testing.assert_allclose(data.datasets["vmm_crossbar_energy_j"].data
                               + data.datasets["vmm_driver_loss_energy_j"].data, e)
    assert np.all(data.datasets["vmm_driver_loss_energy_j"].data > 0)


@pytest.mark.spice
def test_tia_supply_energy_is_bias_times_voltage_times_time_plus_the_output_stage(energy):
    """The TIAs' supplies in ngspice: cols * I_q * (V_dd - V_ss) * T for the bias, plus
    what the output stage draws from the rail it drives its column current from."""
    hw, points, results, data = energy
    tia = hw.tia
    span = tia.supply_high_v - tia.supply_low_v
    for p, r in zip(points, results):
        if p["kind"] != "vmm":
            continue
        e = float(r["tia_supply_energy_j"])
        t = float(r["duration_s"])
        bias = hw.array.cols * tia.i_quiescent_a * span * t
        assert e > bias > 0
        # The output stage: the charge each output sinks comes back through V_ss, what it
        # sources is drawn from V_dd (the column currents from v(tin), v(tout) and R_f).
        stage = tia.supply_high_v * float(r["tia_sourced_charge_c"]) \
            - tia.supply_low_v * float(r["tia_sunk_charge_c"])
        # the smooth class-B split adds at most 0.1 uA per TIA, 0.2% of the bias
        assert e == pytest.approx(bias + stage, rel=3e-3)
        assert float(r["tia_sunk_charge_c"]) > 0
    # the top map's columns carry far more current than the floor's: more output energy
    kinds = [p["tile"] for p in points if p["kind"] == "vmm"]
    e = data.datasets["vmm_tia_supply_energy_j"].data
    assert e[kinds.index("top")] > e[kinds.index("floor")]


@pytest.mark.spice
def test_pulse_energy(energy, tmp_path):
    from calibration.store import open_table, write_table

    _, _, _, data = energy
    e = data.datasets["pulse_energy_by_state_j"].data        # (polarity, amplitude, state)
    assert np.all(e > 0)
    assert np.all(e[:, 1] > e[:, 0])                            # 3 V costs more than 2 V
    src = data.datasets["pulse_source_energy_j"].data
    # SET is delivered by the bit line, RESET by the source line; the gate takes ~nothing.
    assert np.all(src[0, ..., 0] > 0.99 * e[0]) and np.all(src[1, ..., 2] > 0.99 * e[1])
    assert data.datasets["pulse_energy_j"].data.shape == (2, 2)
    before = data.datasets["pulse_conductance_before_s"].data
    after = data.datasets["pulse_conductance_after_s"].data
    assert after[0, 1, 0] > before[0, 1, 0]                    # a 3 V SET from the floor
    write_table(tmp_path / "e.h5", surfaces={"energy": data}, attrs={"content_hash": "y"})
    assert "energy" in open_table(tmp_path / "e.h5", expected_hash="y").surfaces
