"""Calibration surfaces ``cell_read``, ``tia`` and ``adc``: grids, decks and round trips.

Text-only tests check the grids' validation and the rendered decks. ``spice`` tests solve
circuits with known parameters through each surface (points -> solve -> assemble, with the
session's runner; no store) and check that the calibrated surface reproduces what was put
in: the cell's read conductance as ``circuitsim.tile.measure_cell_conductance`` measures it
and the device's I-V from the numpy reference, an ideal TIA's ``-I R_f``, a finite gain's
virtual-ground error, a single-pole TIA's settling, the front-end's binary weights, the
quantizer's transfer with offset and INL, and the conversion noise's spread.
"""

from __future__ import annotations

import dataclasses
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from calibration.base import SurfaceData
from calibration.surfaces import adc, cell_read, get_surface, tia
from circuitsim.reference import DeviceModel
from circuitsim.tile import measure_cell_conductance, quantize
from netlists.calibration_decks import (
    render_adc_noise_deck,
    render_cell_sweep_deck,
    render_tia_dc_deck,
)
from netlists.config import HardwareConfig, SolverConfig, preset
from netlists.errors import ConfigError

SURFACES = (cell_read.SURFACE, tia.SURFACE, adc.SURFACE)


def _tiny(**blocks) -> HardwareConfig:
    return preset("tiny").replace(**blocks)


def _calibrate(surface, hw, grid, runner) -> SurfaceData:
    points = surface.points(hw, grid)
    return surface.assemble(hw, grid, points, [surface.solve(hw, grid, p, runner)
                                               for p in points])


def _with_steps(runner, steps_per_bit: int):
    """The session runner, seen by a surface as one with another ``steps_per_bit``."""
    return SimpleNamespace(solver=SolverConfig(steps_per_bit=steps_per_bit), run=runner.run)


# ------------------------------------------------------------------------- text only

def test_surfaces_are_registered_under_their_names():
    for surface in SURFACES:
        assert get_surface(surface.name) is surface
        for name in ("tiny", "chip", "paper-sim"):
            assert isinstance(surface.grid(name), surface.grid_type)


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
def test_unknown_preset_is_rejected(surface):
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*chip.*paper-sim.*tiny"):
        surface.grid("huge")


@pytest.mark.parametrize("grid_type, changes, message", [
    (cell_read.CellReadGrid, {"n_states": 1}, r"cell_read\.n_states = 1 is out of range"),
    (cell_read.CellReadGrid, {"n_v_cell": 2.5}, r"cell_read\.n_v_cell = 2\.5 must be a whole"),
    (cell_read.CellReadGrid, {"v_cell_rel_min": 2.0},
     r"cell_read\.v_cell_rel_min = 2\.0 must be below cell_read\.v_cell_rel_max = 2\.0"),
    (cell_read.CellReadGrid, {"v_cell_rel_max": 9.0},
     r"cell_read\.v_cell_rel_max = 9\.0 x v_read_v is out of range: allowed \[-5, 5\]"),
    (cell_read.CellReadGrid, {"v_gate_delta_min_v": float("nan")},
     r"cell_read\.v_gate_delta_min_v = nan must be finite"),
    (tia.TIAGrid, {"n_i": 0}, r"tia\.n_i = 0 is out of range: allowed \[2, 20000\]"),
    (tia.TIAGrid, {"i_rel_min": 1.0, "i_rel_max": -1.0}, r"tia\.i_rel_min = 1\.0 must be below"),
    (tia.TIAGrid, {"i_rel_max": True}, r"tia\.i_rel_max = True must be a number"),
    (adc.ADCGrid, {"d_points_per_lsb": 0}, r"adc\.d_points_per_lsb = 0 is out of range"),
    (adc.ADCGrid, {"d_margin_lsb": 0.5}, r"adc\.d_margin_lsb = 0\.5 is out of range.*clip"),
    (adc.ADCGrid, {"noise_draws": 1}, r"adc\.noise_draws = 1 is out of range"),
    (adc.ADCGrid, {"noise_seed": 0}, r"adc\.noise_seed = 0 is out of range"),
    (adc.ADCGrid, {"probe_rel": 0.0}, r"adc\.probe_rel = 0\.0 is out of range"),
])
def test_bad_grids_are_rejected_with_the_field_and_the_range(grid_type, changes, message):
    with pytest.raises(ConfigError, match=message):
        grid_type(**changes)


def test_cell_voltages_beyond_the_frozen_model_are_rejected_for_the_hardware():
    hw = _tiny(drive={"v_read_v": 0.3})       # 2 reads = 0.6 V > 0.5 V
    with pytest.raises(ConfigError, match=r"cell_read\.v_cell_rel_max = 2\.0 reads .* 0\.6"
                                          r".*outside the frozen read model's validity"):
        cell_read.SURFACE.points(hw, cell_read.CellReadGrid())
    hw = _tiny(array={"v_gate_read_v": 4.9})
    with pytest.raises(ConfigError, match=r"gate voltages .* outside \[0, 5\] V"):
        cell_read.SURFACE.points(hw, cell_read.CellReadGrid())


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
def test_points_are_deterministic_and_decks_follow_the_runner_contract(surface):
    hw = preset("chip")
    grid = surface.grid("tiny")
    points = surface.points(hw, grid)
    assert points == surface.points(hw, grid) and points
    texts = surface.netlists(hw, grid)
    assert texts == surface.netlists(hw, grid) and len(texts) == len(points)
    for text in texts:
        cards = [line.split()[0].lower() for line in text.splitlines()[1:]
                 if line.startswith(".")]
        assert ".control" not in cards and cards[-1] == ".end"
        assert sum(c in (".op", ".dc", ".tran") for c in cards) == 1
        assert ".options" in cards
    # a changed circuit changes the decks (they go into the content hash)
    other = hw.replace(tia={"r_feedback_ohm": 6000.0}, device={"n_max": 6.0},
                       adc={"inl_lsb": 0.5})
    assert surface.netlists(other, grid) != texts


def test_index_sweeps_and_the_noise_seed_are_in_the_decks(chip):
    text = render_cell_sweep_deck(chip, [1.0, 2.0], 2.5, -0.025, 0.2, 10)
    assert "Estep row rowlo idx 0 0.025" in text and ".dc Vidx 0 9 1" in text
    assert len(re.findall(r"^Xc\d+ row wl col\d+ cell_1t1r", text, re.M)) == 2
    text = render_tia_dc_deck(chip, -1e-4, 1e-4, 5, 700.0)
    assert "Gstep 0 tin idx 0 5e-05" in text and "Rsrc tin 0 700.0" in text
    text = render_adc_noise_deck(chip, [0.1, 0.2], 4, 17)
    assert ".option seed=17" in text and "TRNOISE" not in text.upper()
    assert len(re.findall(r"TRRANDOM\(1 ", text)) == 4
    with pytest.raises(ConfigError, match="states must lie in"):
        render_cell_sweep_deck(chip, [0.1], 2.5, 0.0, 0.1, 3)


# ------------------------------------------------------------------------- cell_read

@pytest.mark.spice
def test_cell_read_reproduces_the_measured_read_conductance_and_nonlinearity(runner):
    hw = preset("tiny")
    grid = cell_read.SURFACE.grid("tiny")
    s = _calibrate(cell_read.SURFACE, hw, grid, runner)
    n = s.axes["state"].data
    assert s.datasets["current"].data.shape == (grid.n_states, grid.n_v_cell, grid.n_v_gate)
    g = measure_cell_conductance(hw, n, runner=runner)
    g2 = measure_cell_conductance(hw.replace(drive={"v_read_v": 0.2}), n, runner=runner)
    # the same circuit, solved as .dc here and .op there: agreement to solver precision
    # (measured 2e-9 relative)
    np.testing.assert_allclose(s.datasets["g_read"].data, g, rtol=1e-6)
    np.testing.assert_allclose(s.datasets["nonlinearity"].data, g2 / g - 1, atol=1e-6)
    # the grid point (v_read, nominal gate) of the surface is the same read
    v, vg = s.axes["v_cell"].data, s.axes["v_gate"].data
    k, m = int(np.argmin(abs(v - 0.1))), int(np.argmin(abs(vg - 2.5)))
    assert v[k] == pytest.approx(0.1) and vg[m] == pytest.approx(2.5)
    np.testing.assert_allclose(s.datasets["current"].data[:, k, m], 0.1 * g, rtol=1e-6)
    # physics: zero at zero bias, odd in sign, rising with state and with gate voltage
    i = s.datasets["current"].data
    assert np.all(np.abs(i[:, v == 0.0, :]) < 1e-15)
    assert np.all(i[:, v < 0, :] < 0) and np.all(i[:, v > 0, :] > 0)
    assert np.all(np.diff(i[:, v > 0, :], axis=0) > 0)
    assert np.all(np.diff(i[:, v > 0, :], axis=2) > 0)
    assert s.datasets["g_read"].unit == "S" and s.axes["state"].unit == "1e26 m^-3"
    for arr in (*s.axes.values(), *s.datasets.values()):
        assert arr.unit and arr.description


@pytest.mark.spice
def test_cell_read_with_a_negligible_transistor_is_the_numpy_device_model(runner):
    """A 100 um wide access transistor (~15 ohm in series with >= 24 kohm): the surface's
    current must be the compact model's own I-V at T_amb, within the transistor's share
    (measured 5.6e-4 at the top state) -> 1e-3."""
    hw = _tiny(transistor={"w_um": 100.0})
    grid = cell_read.CellReadGrid(n_states=4, n_v_cell=10, n_v_gate=2)
    s = _calibrate(cell_read.SURFACE, hw, grid, runner)
    n, v = s.axes["state"].data, s.axes["v_cell"].data
    ref = DeviceModel(hw.device).current_at(v[None, :], n[:, None], hw.device.t_ambient_k)
    nonzero = v != 0
    for gate in range(grid.n_v_gate):
        np.testing.assert_allclose(s.datasets["current"].data[:, nonzero, gate],
                                   ref[:, nonzero], rtol=1e-3)


# ------------------------------------------------------------------------------- TIA

@pytest.mark.spice
def test_ideal_tia_gives_minus_i_rf_and_a_perfect_virtual_ground(runner):
    hw = _tiny(tia={"open_loop_gain": 1e9, "gbw_hz": 1e12, "v_rail_low_v": -10.0,
                    "v_rail_high_v": 10.0, "v_offset_v": 0.0})
    grid = tia.TIAGrid(n_i=21, i_rel_min=-0.9, i_rel_max=0.9)
    point = {"kind": "dc"}
    assert point in tia.SURFACE.points(hw, grid)
    out = tia.SURFACE.solve(hw, grid, point, runner)
    i = np.linspace(-0.9, 0.9, 21) * tia.full_scale_current(hw)
    # 1/A = 1e-9 of gain error, plus the rail knee's softplus (< 1e-30 V this far inside)
    np.testing.assert_allclose(out["v_out"], -i * hw.tia.r_feedback_ohm, rtol=1e-8, atol=1e-12)
    assert np.max(np.abs(out["v_in"])) < 1e-8


@pytest.mark.spice
def test_finite_gain_tia_virtual_ground_error_is_v_out_over_a_and_rails_clip(runner):
    hw = _tiny(tia={"open_loop_gain": 1e3, "v_offset_v": 0.002})
    grid = tia.TIAGrid(n_i=31)
    s = _calibrate(tia.SURFACE, hw, grid, runner)
    v_out, v_in = s.datasets["v_out"].data, s.datasets["v_in"].data
    # 0.6 V or more inside the rails the clamp's softplus knee (0.05 V wide) moves the
    # output by < 0.05 ln(1 + e^-12) = 3e-7 V
    linear = np.abs(v_out) < 0.9
    assert linear.sum() > 10
    # the op-amp's own law: v_out = A (vos - v_in), to the knee's 3e-7 V / A
    np.testing.assert_allclose(v_in[linear], 0.002 - v_out[linear] / 1e3, atol=1e-9)
    # closed loop: v_out = -(I R_f - vos (1 + R_f/R_s)) / (1 + (1 + R_f/R_s)/A)
    r_f, r_s = hw.tia.r_feedback_ohm, s.attrs["r_source_ohm"]
    noise_gain = 1 + r_f / r_s
    i = s.axes["i_in"].data
    expect = -(i * r_f - 0.002 * noise_gain) / (1 + noise_gain / 1e3)
    np.testing.assert_allclose(v_out[linear], expect[linear], atol=1e-6)
    # both ends beyond the rails: on them within the knee's tail, and flat
    assert v_out[0] == pytest.approx(1.5, abs=1e-4) and v_out[-1] == pytest.approx(-1.5, abs=1e-4)
    assert abs(v_out[1] - v_out[0]) < 1e-4 and abs(v_out[-1] - v_out[-2]) < 1e-4
    assert v_in[-1] > 0.1        # the virtual ground is lost past the rail


@pytest.mark.spice
def test_tia_sample_shows_single_pole_settling_of_a_bit_pulse(runner):
    """Closed loop = one pole, tau = (1 + R_f/R_s) / (2 pi GBW). A bit's current rises
    linearly over t_edge, so at the sample instant t_s (from the bit's start) the output has
    settled 1 - (tau/t_edge) (exp(t_edge/tau) - 1) exp(-t_s/tau). With a fine step the
    surface must show exactly that (1e-4: the finite gain's 1/(A beta) shift of the pole).
    With the tile deck's default step (4 per bit) trapezoidal integration makes the settling
    look better than it is (measured 0.9796 against 0.9771): that is what the tile deck
    computes, and what the surface then holds."""
    hw = preset("chip").replace(tia={"gbw_hz": 300e6})
    grid = tia.TIAGrid(n_i=9, i_rel_min=-0.6, i_rel_max=0.6)
    fine = _calibrate(tia.SURFACE, hw, grid, _with_steps(runner, 200))
    tau = fine.attrs["closed_loop_tau_s"]
    te, ts = hw.drive.t_edge_s, fine.attrs["t_sample_in_bit_s"]
    expected = 1 - tau / te * math.expm1(te / tau) * math.exp(-ts / tau)
    assert 0.95 < expected < 0.999                       # a visible settling error
    assert fine.attrs["settled_fraction"] == pytest.approx(expected, abs=1e-4)
    # a bit after an equal bit starts from near the settled value: settles further
    assert fine.attrs["settled_fraction_repeat"] > fine.attrs["settled_fraction"]
    np.testing.assert_allclose(fine.datasets["settling_error"].data,
                               fine.datasets["v_out_sampled"].data
                               - fine.datasets["v_out"].data)
    coarse = _calibrate(tia.SURFACE, hw, grid, _with_steps(runner, 4))
    assert expected < coarse.attrs["settled_fraction"] < expected + 5e-3


# ------------------------------------------------------------------------------- ADC

@pytest.mark.spice
def test_adc_bit_weights_are_binary_and_codes_are_the_quantizer(runner):
    hw = _tiny(adc={"bits": 6, "v_full_scale_v": 0.8, "comparator_offset_v": 0.01,
                    "inl_lsb": 1.5})
    grid = adc.ADCGrid(d_points_per_lsb=4, n_noise_d=3, noise_draws=2)
    s = _calibrate(adc.SURFACE, hw, grid, runner)
    # the integrator's error on a share is <= 40 uV (netlists.array.ReadTiming), halved by
    # every later share; over a 0.8 V probe that is < 5e-5 of weight
    np.testing.assert_allclose(s.datasets["bit_weight"].data, 2.0 ** (np.arange(8) - 8),
                               atol=5e-5)
    assert abs(float(s.datasets["d_offset"].data)) < 1e-6   # nothing injects charge
    assert abs(s.attrs["superposition_error_v"]) < 1e-6
    d, code = s.axes["d"].data, s.datasets["code"].data
    np.testing.assert_array_equal(code, quantize(hw.adc, d, offset_v=0.01, inl_lsb=1.5))
    assert code[0] == 0 and code[-1] == 63                  # both clip ends are in the sweep
    # each transition lies between codes c-1 and c, to half a step of the d axis
    step = d[1] - d[0]
    c = s.axes["transition"].data
    t = s.datasets["transition_v"].data
    np.testing.assert_array_equal(quantize(hw.adc, t - 0.51 * step, offset_v=0.01,
                                           inl_lsb=1.5), c - 1)
    np.testing.assert_array_equal(quantize(hw.adc, t + 0.51 * step, offset_v=0.01,
                                           inl_lsb=1.5), c)
    # noiseless: no spread, and the mean is the quantizer
    np.testing.assert_array_equal(s.datasets["code_std"].data, 0.0)
    np.testing.assert_array_equal(s.datasets["code_mean"].data,
                                  quantize(hw.adc, s.axes["d_noise"].data, offset_v=0.01,
                                           inl_lsb=1.5))


def _expected_code_std(adc_params, d: np.ndarray, sigma: float) -> np.ndarray:
    """Std of ``quantize(D + N(0, sigma))`` (no offset or INL), from the code probabilities."""
    lsb = adc_params.v_full_scale_v / 2 ** adc_params.bits
    top = 2 ** adc_params.bits - 1
    edges = (np.arange(1, top + 1) - 0.5) * lsb          # code c from edges[c-1] on
    cdf = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
    out = []
    for dk in d:
        above = cdf((dk - edges) / sigma)                  # P(code >= c), c = 1..top
        p = -np.diff(np.concatenate([[1.0], above, [0.0]]))
        codes = np.arange(top + 1)
        mean = p @ codes
        out.append(math.sqrt(max(p @ (codes - mean) ** 2, 0.0)))
    return np.array(out)


@pytest.mark.spice
def test_adc_noise_is_seeded_reproducible_and_of_the_configured_spread(runner):
    sigma = 0.6 / 256                                      # 0.6 LSB
    hw = _tiny(adc={"noise_v_rms": sigma})
    grid = adc.ADCGrid(d_points_per_lsb=1, n_noise_d=40, noise_draws=100, noise_runs=2,
                       noise_seed=11)
    points = adc.SURFACE.points(hw, grid)
    noise = [p for p in points if p["kind"] == "noise"]
    assert [p["seed"] for p in noise] == [11, 12]
    first = adc.SURFACE.solve(hw, grid, noise[0], runner)
    again = adc.SURFACE.solve(hw, grid, noise[0], runner)
    other = adc.SURFACE.solve(hw, grid, noise[1], runner)
    np.testing.assert_array_equal(first["codes"], again["codes"])     # same seed: identical
    assert not np.array_equal(first["codes"], other["codes"])         # another seed: not
    results = [adc.SURFACE.solve(hw, grid, p, runner) if p["kind"] != "noise" else
               (first if p["seed"] == 11 else other) for p in points]
    s = adc.SURFACE.assemble(hw, grid, points, results)
    # 40 x 200 Gaussian draws: the std estimate is within ~1% (2 sigma ~ 1.6%)
    assert s.attrs["noise_v_rms_measured"] == pytest.approx(sigma, rel=0.04)
    d = s.axes["d_noise"].data
    inside = (d > 3 * sigma) & (d < 1.0 - 3 * sigma)        # clipping narrows the ends
    expected = _expected_code_std(hw.adc, d, sigma)
    # 200 draws per point: each std within ~5% (1 sigma); their mean within ~1%
    assert np.mean(s.datasets["code_std"].data[inside]) == pytest.approx(
        np.mean(expected[inside]), rel=0.05)
    # the mean code follows D (noise averages out to within ~0.1 LSB)
    lsb = 1.0 / 256
    np.testing.assert_allclose(s.datasets["code_mean"].data[inside], d[inside] / lsb,
                               atol=0.25)


# ---------------------------------------------------------------------- into HDF5

@pytest.mark.spice
def test_the_three_surfaces_store_and_read_back(runner, tmp_path):
    from calibration.store import open_table, write_table

    hw = preset("tiny")
    data = {s.name: _calibrate(s, hw, s.grid("tiny"), runner) for s in SURFACES}
    for name, surface in data.items():
        assert set(surface.dims) == set(surface.datasets), name
    path = tmp_path / "t.h5"
    write_table(path, surfaces=data, attrs={"content_hash": "test"})
    table = open_table(path, expected_hash="test")
    for name, surface in data.items():
        back = table.surface(name)
        for key, arr in surface.datasets.items():
            np.testing.assert_array_equal(back.datasets[key].data, arr.data)
            assert back.datasets[key].unit == arr.unit
    assert dataclasses.is_dataclass(adc.SURFACE.grid("tiny"))
