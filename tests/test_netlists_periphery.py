"""The periphery netlists: access NMOS card, 1T1R cell, TIA macro-model, ADC front-end.

Text-only tests render the blocks and check what they say; ``spice`` tests solve each block
alone in ngspice and compare it with what it is documented to do.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from circuitsim.tile import quantize
from netlists.array import read_timing
from netlists.config import ADCParams, DriveParams, TIAParams, TransistorParams
from netlists.errors import ConfigError
from netlists.periphery import (
    ADC_FRONTEND_SUBCKT,
    ADC_QUANTIZER_SUBCKT,
    CELL_SUBCKT,
    NMOS_MODEL,
    TIA_SUBCKT,
    adc_frontend_subckt,
    adc_quantizer_subckt,
    cell_subckt,
    fmt,
    nmos_instance,
    nmos_model_card,
    tia_instance,
    tia_subckt,
    tia_supply_sources,
)


def _number_after(text: str, key: str) -> float:
    match = re.search(rf"(?<![\w.]){re.escape(key)}=?\s*([-+0-9.eE]+)", text)
    assert match, f"{key} not found"
    return float(match.group(1))


# ------------------------------------------------------------------------- text only

def test_fmt_round_trips_doubles_and_rejects_non_numbers():
    for value in (0.1, 1e-13, 3.183098861837907e-09, -1.5, 255):
        assert float(fmt(value)) == value
    with pytest.raises(ValueError):
        fmt(float("nan"))
    with pytest.raises(TypeError):
        fmt(True)


def test_nmos_card_is_bsim4_with_the_configured_values():
    p = TransistorParams(w_um=1.2, l_um=0.5, vth0_v=0.5, toxe_nm=6.0, u0_m2_vs=0.025,
                         vsat_m_s=9e4, rdsw_ohm_um=250.0)
    card = nmos_model_card(p)
    assert f".model {NMOS_MODEL} nmos level=54" in card
    assert _number_after(card, "vth0") == 0.5
    assert _number_after(card, "toxe") == pytest.approx(6e-9)
    assert _number_after(card, "toxp") == pytest.approx(6e-9)
    assert _number_after(card, "u0") == 0.025
    assert _number_after(card, "vsat") == 9e4
    assert _number_after(card, "rdsw") == 250.0
    assert "k3=0" in card and "lpe0=0" in card
    line = nmos_instance("1", "d", "g", "s", "0", p)
    assert line.startswith(f"M1 d g s 0 {NMOS_MODEL} ")
    assert _number_after(line, "w") == pytest.approx(1.2e-6)
    assert _number_after(line, "l") == pytest.approx(0.5e-6)


def test_cell_subckt_puts_rram_at_the_row_and_nmos_at_the_column(chip):
    text = cell_subckt(chip.transistor, chip.device)
    assert f".subckt {CELL_SUBCKT} d g s params: n=" in text
    assert re.search(r"^X1 d m rram_frozen n=\{n\}$", text, re.M)
    assert re.search(rf"^M1 m g s 0 {NMOS_MODEL} ", text, re.M)
    assert text.rstrip().endswith(f".ends {CELL_SUBCKT}")


def test_tia_macro_model_gain_and_pole_follow_the_config():
    p = TIAParams(open_loop_gain=2e4, gbw_hz=1e9, r_feedback_ohm=12e3, v_offset_v=1e-3)
    text = tia_subckt(p)
    assert f".subckt {TIA_SUBCKT} inn out vdd vss params: vos=0.001" in text
    gm = _number_after(text, "Gm 0 ng inp inn")
    r1 = _number_after(text, "R1 ng 0")
    c1 = _number_after(text, "C1 ng 0")
    assert gm * r1 == pytest.approx(2e4)                       # DC gain
    assert gm / (2 * math.pi * c1) == pytest.approx(1e9)       # gain-bandwidth product
    assert _number_after(text, "Rf out inn") == 12e3


def test_adc_frontend_uses_equal_capacitors_and_the_switch_conductance():
    adc = ADCParams(c_sample_f=250e-15, r_switch_on_ohm=500.0)
    text = adc_frontend_subckt(adc)
    assert f".subckt {ADC_FRONTEND_SUBCKT} vin acc phi1 phi2 phir" in text
    assert _number_after(text, "Cs cs 0") == 250e-15
    assert _number_after(text, "Ca acc 0") == 250e-15
    assert text.count("+0.002*") == 3      # g_on = 1 / 500 ohm in all three switches
    assert "Einv vk 0 0 vin 1" in text     # inverting unity buffer


def test_read_timing_rejects_edges_that_leave_no_tracking_time():
    with pytest.raises(ConfigError, match="t_edge_s"):
        read_timing(DriveParams(t_bit_s=10e-9, t_edge_s=3e-9))
    timing = read_timing(DriveParams(t_bit_s=20e-9, t_edge_s=1e-9, input_bits=8))
    assert timing.t_stop_s == pytest.approx(161e-9)
    np.testing.assert_allclose(timing.sample_times_s()[[0, 7]], [18.5e-9, 158.5e-9])


def test_quantizer_numpy_transfer_rounds_offsets_and_clips():
    adc = ADCParams(bits=8, v_full_scale_v=1.0)
    lsb = 1.0 / 256
    codes = quantize(adc, np.array([-0.1, 0.0, 0.49 * lsb, 0.51 * lsb, 100.3 * lsb, 2.0]))
    np.testing.assert_array_equal(codes, [0, 0, 0, 1, 100, 255])
    assert quantize(adc, 100.3 * lsb, offset_v=3 * lsb) == 103
    # the bow INL is zero at the ends of the range and `inl_lsb` at mid-scale
    assert quantize(adc, 128.2 * lsb, inl_lsb=2.0) == 130
    assert quantize(adc, 2.2 * lsb, inl_lsb=2.0) == 2


# ------------------------------------------------------------------------- in ngspice

def _op_deck(title: str, body: list[str], analysis: str, saves: list[str]) -> str:
    return "\n".join([title, ".options klu", *body, analysis,
                      ".save " + " ".join(saves), ".end"]) + "\n"


@pytest.mark.spice
def test_nmos_iv_on_resistance_compliance_and_off_current(runner, chip):
    """The card's I-V: read on-resistance, SET compliance current, off leakage.

    Bands: a 65 nm-class 2.5/3.3 V I/O NMOS of W/L = 0.6/0.28 um has a few kohm at
    Vgs = 2.5 V (small Vds) and 50-150 uA at Vgs = 1.2 V in saturation (a SET compliance);
    off, well below a nA.
    """
    t = chip.transistor
    points = {"ron": (2.5, 0.1), "sat": (1.2, 1.5), "max": (3.0, 3.0), "off": (0.0, 3.0)}
    body = [nmos_model_card(t)]
    for key, (vg, vd) in points.items():
        body += [f"Vg{key} g{key} 0 DC {vg}", f"Vd{key} d{key} 0 DC {vd}",
                 nmos_instance(key, f"d{key}", f"g{key}", "0", "0", t)]
    res = runner.run(_op_deck("nmos iv", body, ".op", [f"i(vd{k})" for k in points]),
                     name="nmos_iv")
    current = {k: -float(res[f"i(vd{k})"][0]) for k in points}
    r_on = 0.1 / current["ron"]
    # The default card gives 2.15 kohm, 76 uA and 0.455 mA, pinned within 3% (a changed
    # card or model fails here); all inside the bands of the docstring for this class
    # (1.5-4 kohm, 50-150 uA, 0.2-0.6 mA at Vgs = Vds = 3 V).
    assert r_on == pytest.approx(2.15e3, rel=0.03), f"on-resistance {r_on} ohm"
    assert current["sat"] == pytest.approx(76e-6, rel=0.03), \
        f"SET compliance {current['sat']} A"
    assert current["max"] == pytest.approx(0.455e-3, rel=0.03), \
        f"current at Vgs = Vds = 3 V {current['max']} A"
    assert abs(current["off"]) < 1e-9, current


@pytest.mark.spice
def test_tia_converts_current_to_minus_i_rf_and_saturates_at_the_rails(runner):
    p = TIAParams(r_feedback_ohm=10e3, open_loop_gain=1e4, v_rail_low_v=-1.2,
                  v_rail_high_v=1.2)
    currents = [0.0, 10e-6, 50e-6, -50e-6, 300e-6, -300e-6]
    body = [tia_subckt(p), tia_supply_sources(p)]
    for k, i in enumerate(currents):
        body += [f"I{k} 0 in{k} DC {i!r}", tia_instance(f"X{k}", f"in{k}", f"out{k}")]
    saves = [f"v(out{k})" for k in range(len(currents))] + \
        [f"v(in{k})" for k in range(len(currents))]
    res = runner.run(_op_deck("tia dc", body, ".op", saves), name="tia_dc")
    out = np.array([res[f"v(out{k})"][0] for k in range(len(currents))])
    vin = np.array([res[f"v(in{k})"][0] for k in range(len(currents))])
    linear = slice(0, 4)
    ideal = -np.array(currents[linear]) * p.r_feedback_ohm
    # closed-loop gain error ~ 1/A (1e-4), plus the clamp's knee (< 1e-4 V this far in)
    np.testing.assert_allclose(out[linear], ideal, rtol=5e-4, atol=1e-4)
    # the virtual ground is off by v(out)/A
    np.testing.assert_allclose(vin[linear], -out[linear] / p.open_loop_gain, atol=2e-6)
    # far beyond the rails: pinned at them (within the knee) and the virtual ground is lost
    assert out[4] == pytest.approx(-1.2, abs=0.01) and out[5] == pytest.approx(1.2, abs=0.01)
    assert vin[4] > 0.1


@pytest.mark.spice
def test_tia_input_offset_appears_at_the_output(runner):
    p = TIAParams(v_offset_v=2e-3)
    body = [tia_subckt(p), tia_supply_sources(p), tia_instance("X0", "in0", "out0"),
            tia_instance("X1", "in1", "out1", -0.005)]
    res = runner.run(_op_deck("tia offset", body, ".op", ["v(out0)", "v(out1)"]),
                     name="tia_offset")
    # nothing at the input but R_f: a unity-gain follower of the offset
    assert res["v(out0)"][0] == pytest.approx(2e-3, rel=1e-3)
    assert res["v(out1)"][0] == pytest.approx(-5e-3, rel=1e-3)


@pytest.mark.spice
def test_frontend_accumulates_with_binary_weights(runner):
    """Drive the front-end with a known staircase V_k and check D = sum 2^(k-8) V_k."""
    drive = DriveParams()
    adc = ADCParams()
    timing = read_timing(drive)
    rng = np.random.default_rng(7)
    v_k = rng.uniform(0.0, 1.0, drive.input_bits)
    # TIA output is -V_k during bit k; it steps while the input would fall, [kT - te, kT]
    T, te = drive.t_bit_s, drive.t_edge_s
    pts = [(0.0, -v_k[0])]
    for k in range(1, drive.input_bits):
        pts += [(k * T - te, -v_k[k - 1]), (k * T, -v_k[k])]
    pwl = " ".join(f"{fmt(t)} {fmt(v)}" for t, v in pts)
    body = [adc_frontend_subckt(adc), f"Vin vin 0 PWL({pwl})",
            f"Vphir phir 0 {timing.phir_pwl()}", f"Vphi1 phi1 0 {timing.phi1_pwl()}",
            f"Vphi2 phi2 0 {timing.phi2_pwl()}",
            f"X1 vin acc phi1 phi2 phir {ADC_FRONTEND_SUBCKT}"]
    step = T / 20
    res = runner.run(_op_deck("frontend", body,
                              f".tran {fmt(step)} {fmt(timing.t_stop_s)} 0 {fmt(step)} uic",
                              ["v(acc)"]), name="frontend")
    weights = 2.0 ** (np.arange(drive.input_bits) - drive.input_bits)
    # RC settling leaves exp(-20) of each step; the integrator's error on the stiff share was
    # measured at <= 40 uV per share (netlists.array.ReadTiming), halved by every later
    # share; 100 uV is 1/40 of an 8-bit LSB of 1 V
    assert res["v(acc)"][-1] == pytest.approx(float(weights @ v_k), abs=1e-4)


@pytest.mark.spice
def test_quantizer_in_spice_equals_numpy_transfer(runner):
    adc = ADCParams(bits=6, v_full_scale_v=0.8, comparator_offset_v=0.01, inl_lsb=1.5)
    lsb = adc.v_full_scale_v / 2 ** adc.bits
    # sweep points a third of an LSB away from every code boundary
    d = (np.arange(-3, 2 ** adc.bits + 3) + 0.37) * lsb
    pwl = " ".join(f"{k} {fmt(v)}" for k, v in enumerate(d))
    body = [adc_quantizer_subckt(adc), f"Vacc acc 0 PWL({pwl})", "Vidx idx 0 DC 0",
            f"Xq acc code {ADC_QUANTIZER_SUBCKT}",
            f"Xq2 acc code2 {ADC_QUANTIZER_SUBCKT} voff=-0.02 inl=0"]
    # the PWL is indexed by a DC sweep of time-like variable: use a transient over "seconds"
    deck = "\n".join(["quantizer sweep", ".options klu", *body,
                      f".tran 1 {len(d) - 1} 0 1", ".save v(acc) v(code) v(code2)", ".end"])
    res = runner.run(deck, name="quantizer")
    t = res["time"]
    at = np.array([np.argmin(np.abs(t - k)) for k in range(len(d))])
    np.testing.assert_array_equal(np.rint(res["v(code)"][at]).astype(int),
                                  quantize(adc, d, offset_v=0.01, inl_lsb=1.5))
    np.testing.assert_array_equal(np.rint(res["v(code2)"][at]).astype(int),
                                  quantize(adc, d, offset_v=-0.02, inl_lsb=0.0))
