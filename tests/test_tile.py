"""The tile deck (array + bit-serial drive + TIAs + ADC front-ends) and its solve.

Text-only tests check the rendered deck; ``spice`` tests solve small tiles (at most 8x8) in
ngspice and compare them with the ideal crossbar and with the physics they must show.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from circuitsim.tile import (
    TileResult,
    ideal_accumulated_v,
    ideal_codes,
    measure_cell_conductance,
    quantize,
    render_tile,
    solve_tile,
)
from netlists.array import bit_planes, read_timing, render_tile_deck
from netlists.config import HardwareConfig, preset
from netlists.errors import ConfigError
from netlists.periphery import SHARE_THRESHOLD_V, TRACK_THRESHOLD_V, fmt


def _hw(rows: int, cols: int, **blocks) -> HardwareConfig:
    return preset("tiny").replace(array={"rows": rows, "cols": cols, **blocks.pop("array", {})},
                                  **blocks)


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _mid_states(hw: HardwareConfig) -> np.ndarray:
    return np.full((hw.array.rows, hw.array.cols), 0.5 * (hw.device.n_min + hw.device.n_max))


W8 = 2.0 ** (np.arange(8) - 8)   # multi-cycle weights of bits 0 (LSB) .. 7


# ------------------------------------------------------------------------- text only

def test_deck_has_every_element_once():
    hw = _hw(4, 3)
    text = render_tile_deck(hw, _mid_states(hw), [1, 2, 3, 255], name="t43")
    assert text.splitlines()[0].startswith("t43:")
    assert len(_lines(text, "Xc")) == 12
    assert len(_lines(text, "Vrow")) == 4
    assert len(_lines(text, "Rdrv")) == 4
    assert len(_lines(text, "Rrow")) == 4 * 3          # driver -> cell 0, then between cells
    assert len(_lines(text, "Rcol")) == 4 * 3          # between cells, then last cell -> TIA
    for prefix in ("Xtia", "Xadc", "Xq"):
        assert len(_lines(text, prefix)) == 3
    assert ".subckt rram_frozen" in text and ".model nmos_io nmos level=54" in text
    assert _lines(text, ".options klu") and ".control" not in text
    assert len(_lines(text, ".tran")) == 1 and _lines(text, ".tran")[0].endswith(" uic")
    assert text.rstrip().splitlines()[-1] == ".end"
    saved = " ".join(_lines(text, ".save"))
    for j in range(3):
        for vec in (f"v(tout{j})", f"v(acc{j})", f"v(code{j})"):
            assert vec in saved
    # cell (i, j): row node r<i>_<j>, gate on the word line, column node c<i>_<j>
    assert f"Xc2_1 r2_1 wl c2_1 cell_1t1r n={fmt(_mid_states(hw)[2, 1])}" in text
    assert "Rcol1_0 tin1 c3_1 1.0" in text               # the column's end joins the TIA
    assert "Xtia1 tin1 tout1 tia_vdd tia_vss tia vos=0.0" in text


def test_zero_resistances_merge_nodes_instead_of_writing_zero_ohm_resistors():
    hw = _hw(2, 2, array={"r_driver_ohm": 0.0, "r_wire_row_ohm": 0.0, "r_wire_col_ohm": 0.0})
    text = render_tile_deck(hw, _mid_states(hw), [0, 0])
    assert not _lines(text, "Rdrv") and not _lines(text, "Rrow") and not _lines(text, "Rcol")
    assert re.search(r"^Xc1_0 in1 wl tin0 cell_1t1r ", text, re.M)


def test_bit_serial_drive_is_lsb_first_pulses_at_the_read_voltage():
    hw = _hw(2, 1, drive={"v_read_v": 0.2, "t_bit_s": 10e-9, "t_edge_s": 1e-9})
    x = [0b10110001, 0b01000110]
    text = render_tile_deck(hw, _mid_states(hw), x)
    T, te = 10e-9, 1e-9
    for i, xi in enumerate(x):
        (line,) = _lines(text, f"Vrow{i} ")
        values = [float(v) for v in re.search(r"PWL\((.*)\)", line).group(1).split()]
        t, v = np.array(values[0::2]), np.array(values[1::2])
        assert np.all(np.diff(t) > 0)
        mid = (np.arange(8) + 0.5) * T
        np.testing.assert_allclose(np.interp(mid, t, v), 0.2 * ((xi >> np.arange(8)) & 1))
        # every pulse returns to zero at the bit boundary and rises over t_edge
        np.testing.assert_allclose(np.interp(np.arange(9) * T, t, v), 0.0)
        np.testing.assert_allclose(np.interp(np.arange(8) * T + te / 2, t, v),
                                   0.1 * ((xi >> np.arange(8)) & 1))
    np.testing.assert_array_equal(bit_planes(np.array(x), 8)[:, 0], [1, 0, 0, 0, 1, 1, 0, 1])


def test_clock_phases_never_overlap_and_sample_on_the_flat_top():
    drive = preset("tiny").drive
    timing = read_timing(drive)

    def wave(pwl: str, t: np.ndarray) -> np.ndarray:
        vals = [float(v) for v in re.search(r"PWL\((.*)\)", pwl).group(1).split()]
        return np.interp(t, vals[0::2], vals[1::2])

    t = np.linspace(0, timing.t_stop_s, 200001)
    on1 = wave(timing.phi1_pwl(), t) > TRACK_THRESHOLD_V
    on2 = wave(timing.phi2_pwl(), t) > SHARE_THRESHOLD_V
    onr = wave(timing.phir_pwl(), t) > SHARE_THRESHOLD_V
    assert not np.any(on1 & on2) and not np.any(on1 & onr) and not np.any(on2 & onr)
    T, te = drive.t_bit_s, drive.t_edge_s
    ts = timing.sample_times_s()
    # the sample is taken while the input is flat: after its rise, before its fall
    assert np.all(ts % T > te) and np.all(ts % T < T - te)


@pytest.mark.parametrize("states, match", [
    (np.full((3, 2), 3.0), r"states has shape \(3, 2\).*\(2, 2\)"),
    (np.array([[3.0, 3.0], [3.0, 9.0]]), r"states\[1, 1\] = 9.0 is outside"),
    (np.array([[3.0, np.nan], [3.0, 3.0]]), r"states\[0, 1\].*not finite"),
])
def test_rejects_bad_states(states, match):
    hw = _hw(2, 2)
    with pytest.raises(ConfigError, match=match):
        render_tile_deck(hw, states, [0, 1])


@pytest.mark.parametrize("x, match", [
    ([1, 2, 3], r"x has shape \(3,\).*\(2,\)"),
    ([1, 256], r"x\[1\] = 256 is outside \[0, 255\]"),
    ([-1, 0], r"x\[0\] = -1 is outside"),
    ([1.5, 2.0], r"x\[0\] = 1.5 is not a whole number"),
    ([True, False], r"integers"),
    (["a", "b"], r"integers"),
])
def test_rejects_bad_inputs(x, match):
    hw = _hw(2, 2)
    with pytest.raises(ConfigError, match=match):
        render_tile_deck(hw, _mid_states(hw), x)


def test_whole_floats_are_accepted_as_inputs():
    hw = _hw(2, 2)
    assert render_tile_deck(hw, _mid_states(hw), np.array([3.0, 255.0])) == \
        render_tile_deck(hw, _mid_states(hw), [3, 255])


def test_columns_of_one_adc_share_its_offset_and_inl():
    hw = _hw(1, 5, adc={"columns_per_adc": 2})        # ADCs: {0, 1}, {2, 3}, {4}
    text = render_tile_deck(hw, _mid_states(hw), [7], adc_offset_v=[0.01, -0.02, 0.0],
                            adc_inl_lsb=[1.0, 0.0, -2.0])
    voff = [float(re.search(r"voff=(\S+)", line).group(1)) for line in _lines(text, "Xq")]
    inl = [float(re.search(r"inl=(\S+)", line).group(1)) for line in _lines(text, "Xq")]
    assert voff == [0.01, 0.01, -0.02, -0.02, 0.0]
    assert inl == [1.0, 1.0, 0.0, 0.0, -2.0]
    with pytest.raises(ConfigError, match=r"adc_offset_v has shape \(5,\); expected \(3,\)"):
        render_tile_deck(hw, _mid_states(hw), [7], adc_offset_v=np.zeros(5))
    with pytest.raises(ConfigError, match="tia_offset_v"):
        render_tile_deck(hw, _mid_states(hw), [7], tia_offset_v=np.zeros(3))


def test_render_tile_is_the_array_deck():
    hw = _hw(2, 2)
    assert render_tile(hw, _mid_states(hw), [1, 2], name="a") == \
        render_tile_deck(hw, _mid_states(hw), [1, 2], name="a")


def test_ideal_crossbar_reference_is_the_weighted_bit_sum():
    hw = _hw(2, 2, tia={"r_feedback_ohm": 10e3}, drive={"v_read_v": 0.1})
    g = np.array([[10e-6, 20e-6], [30e-6, 40e-6]])
    x = np.array([128, 3])
    # bit by bit: V_k = R_f v_read sum_i g_ij bit_k(x_i); D = sum_k 2^(k-8) V_k
    v_k = 10e3 * 0.1 * (bit_planes(x, 8) @ g)
    np.testing.assert_allclose(ideal_accumulated_v(hw, g, x), W8 @ v_k)
    np.testing.assert_allclose(ideal_accumulated_v(hw, g, x),
                               [1e3 * (128 * 10e-6 + 3 * 30e-6) / 256,
                                1e3 * (128 * 20e-6 + 3 * 40e-6) / 256])
    np.testing.assert_array_equal(ideal_codes(hw, g, x),
                                  quantize(hw.adc, ideal_accumulated_v(hw, g, x)))
    with pytest.raises(ConfigError, match="g_siemens"):
        ideal_codes(hw, g[:1], x)


# ------------------------------------------------------------------------- in ngspice


@pytest.mark.spice
def test_codes_match_the_ideal_crossbar_with_ideal_periphery(runner):
    """No wire or driver resistance, a high-gain TIA, no offsets: the circuit must agree
    with the ideal crossbar built from the cells' own read conductances (RRAM + NMOS,
    measured in ngspice) to within one code; D to within 0.15 LSB.

    What remains between them: the virtual-ground error v(out)/A (1e-6 relative), TIA
    settling exp(-t/tau) with tau = (1 + R_f/R_col)/(2 pi GBW) < 1 ns against ~17 ns of
    flat top, and charge-sharing settling exp(-10) per bit: all < 1e-4 of D.
    (A much faster TIA is not "more ideal" here: with GBW = 20 GHz its closed loop is a
    ~10 ps pole, stiff against 1 ns steps, and trapezoidal integration rings by ~2 mV.)
    """
    hw = _hw(8, 8, array={"r_driver_ohm": 0.0, "r_wire_row_ohm": 1e-3, "r_wire_col_ohm": 1e-3},
             tia={"open_loop_gain": 1e6, "gbw_hz": 2e9, "r_feedback_ohm": 40e3})
    rng = np.random.default_rng(2024)
    states = rng.uniform(hw.device.n_min, hw.device.n_max, (8, 8))
    g = measure_cell_conductance(hw, states, runner=runner)
    lsb = hw.adc.v_full_scale_v / 2 ** hw.adc.bits
    for trial in range(2):
        x = rng.integers(0, 256, 8)
        res = solve_tile(hw, states, x, runner=runner, name=f"ideal_{trial}")
        assert isinstance(res, TileResult) and res.solve_seconds > 0
        assert res.codes.shape == (8,) and res.tia_out_v.shape == (8, 8)
        d_ideal = ideal_accumulated_v(hw, g, x)
        assert d_ideal.max() > 0.2 * hw.adc.v_full_scale_v     # the test uses the range
        np.testing.assert_allclose(res.accumulated_v, d_ideal, atol=0.15 * lsb)
        assert np.all(np.abs(res.codes - ideal_codes(hw, g, x)) <= 1)
        # the front-end did what it says: D is the weighted sum of its own samples
        np.testing.assert_allclose(res.accumulated_v, W8 @ (-res.tia_out_v), atol=5e-5)
        # and each sample is -R_f times the column current of that bit
        v_k = hw.tia.r_feedback_ohm * hw.drive.v_read_v * (bit_planes(x, 8) @ g)
        np.testing.assert_allclose(-res.tia_out_v, v_k, atol=0.15 * lsb)


@pytest.mark.spice
def test_wire_resistance_lowers_the_output_monotonically(runner):
    """IR drop: more resistance per segment, less current in every column; and the column
    farthest from the row drivers loses most."""
    base = _hw(8, 8, tia={"r_feedback_ohm": 10e3})
    states = np.full((8, 8), base.device.n_max)
    x = np.full(8, 255)
    outputs = []
    for r in (0.0, 10.0, 100.0, 1000.0):
        hw = base.replace(array={"rows": 8, "cols": 8, "r_wire_row_ohm": r,
                                 "r_wire_col_ohm": r})
        outputs.append(solve_tile(hw, states, x, runner=runner, name=f"ir_{r:g}").accumulated_v)
    d = np.array(outputs)
    assert np.all(np.diff(d, axis=0) < 0), d
    assert d[-1, -1] < d[-1, 0] and d[-1, 0] < 0.9 * d[0, 0]


@pytest.mark.spice
def test_accumulation_weights_are_binary(runner):
    """One row, one column: x = 1 (only the LSB pulse) against x = 128 (only the MSB).

    A fast TIA (2 GHz GBW): with the default 500 MHz and R_f = 200 kohm the closed loop
    settles with tau ~ 3 ns, and a pulse that follows another starts from a less discharged
    TIA, so x = 255 would read 0.16% high (inter-symbol interference, not the weights).
    """
    hw = _hw(1, 1, array={"r_driver_ohm": 0.0, "r_wire_row_ohm": 0.0, "r_wire_col_ohm": 0.0},
             tia={"r_feedback_ohm": 200e3, "gbw_hz": 2e9})
    states = np.full((1, 1), hw.device.n_max)
    d = {x: solve_tile(hw, states, [x], runner=runner, name=f"bin_{x}").accumulated_v[0]
         for x in (1, 128, 255)}
    assert d[128] > 0.2
    # x = 1 gives ~3 mV; charge-sharing settling leaves < 15 uV on it: 1%
    assert d[128] / d[1] == pytest.approx(128, rel=0.01)
    assert d[255] / d[128] == pytest.approx(255 / 128, rel=1e-3)


@pytest.mark.spice
def test_tia_saturation_at_its_rail_is_visible(runner):
    hw = _hw(4, 2, tia={"r_feedback_ohm": 1e6, "v_rail_low_v": -1.2})
    states = np.full((4, 2), hw.device.n_max)
    res = solve_tile(hw, states, np.full(4, 255), runner=runner, name="saturate")
    # ideally -I R_f would be several volts; the output sits at the rail (within the knee)
    assert ideal_accumulated_v(hw, np.full((4, 2), 20e-6), np.full(4, 255)).min() > 5
    np.testing.assert_allclose(res.tia_out_v, -1.2, atol=0.02)
    assert np.all(res.tia_out_v > -1.2 - 1e-3)
    np.testing.assert_allclose(res.accumulated_v, 1.2 * 255 / 256, atol=0.02)
    np.testing.assert_array_equal(res.codes, 255)      # beyond full scale: top code


@pytest.mark.spice
def test_codes_apply_each_adcs_offset_and_inl(runner):
    hw = _hw(3, 4, array={"r_driver_ohm": 0.0, "r_wire_row_ohm": 0.0, "r_wire_col_ohm": 0.0},
             adc={"columns_per_adc": 2}, tia={"r_feedback_ohm": 40e3})
    lsb = hw.adc.v_full_scale_v / 2 ** hw.adc.bits
    rng = np.random.default_rng(5)
    states = rng.uniform(hw.device.n_min, hw.device.n_max, (3, 4))
    x = np.array([200, 150, 255])
    offsets, inls = np.array([3.2 * lsb, -2.1 * lsb]), np.array([0.0, 2.5])
    plain = solve_tile(hw, states, x, runner=runner, name="adc_plain")
    shifted = solve_tile(hw, states, x, runner=runner, name="adc_shifted",
                         adc_offset_v=offsets, adc_inl_lsb=inls)
    # the quantizer loads nothing; only the time steps differ (ngspice reltol 1e-3 of LTE)
    np.testing.assert_allclose(shifted.accumulated_v, plain.accumulated_v, atol=2e-5)
    group = np.arange(4) // 2
    np.testing.assert_array_equal(
        shifted.codes, quantize(hw.adc, shifted.accumulated_v, offset_v=offsets[group],
                                inl_lsb=inls[group]))
    np.testing.assert_array_equal(plain.codes, quantize(hw.adc, plain.accumulated_v))
    assert np.all(shifted.codes[:2] - plain.codes[:2] == 3)


@pytest.mark.spice
def test_cell_conductance_rises_with_state_and_includes_the_transistor(runner, chip):
    n = np.linspace(chip.device.n_min, chip.device.n_max, 5)
    g = measure_cell_conductance(chip, n, runner=runner)
    assert np.all(np.diff(g) > 0)
    assert 2e-6 < g[0] and g[-1] < 45e-6     # the paper's 4-40 uS device, less the NMOS drop
