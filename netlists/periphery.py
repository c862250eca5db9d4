"""SPICE text for the periphery of a 1T1R tile: access transistor, cell, TIA, ADC front-end.

Every function here is pure: typed configuration in, SPICE text out; nothing runs a simulator.
Each rendered block starts with a comment that says what it models and which ngspice syntax it
relies on, so a deck read on its own explains itself.

Blocks
------
``nmos_model_card``  BSIM4 (level=54) card of the thick-oxide I/O NMOS access transistor.
``nmos_instance``    one ``M`` line using that card (for cells written elsewhere, e.g. the
                     dynamic cell used for pulse programming).
``cell_subckt``      ``.subckt cell_1t1r d g s params: n=`` = frozen-state RRAM + NMOS.
``tia_subckt``       ``.subckt tia inn out vdd vss params: vos=`` = op-amp macro-model +
                     feedback R, on the supplies of ``tia_supply_sources``.
``adc_frontend_subckt`` ``.subckt adc_sc vin acc phi1 phi2 phir`` = inverting buffer and the
                     switched-capacitor, binary-weighted multi-cycle accumulator.
``adc_quantizer_subckt`` ``.subckt adc_quant acc code params: voff= inl=`` = the single
                     conversion after the last input bit, as a behavioural B-source.

Names of subcircuits, models and pins are module constants, so that the array generator and
the tests refer to them by name rather than by string literal.
"""

from __future__ import annotations

import math

from netlists.config import ADCParams, DeviceParams, TIAParams, TransistorParams

__all__ = [
    "NMOS_MODEL",
    "CELL_SUBCKT",
    "RRAM_FROZEN_SUBCKT",
    "TIA_SUBCKT",
    "TIA_SUPPLY_SOURCES",
    "TIA_SUPPLY_NODES",
    "ADC_FRONTEND_SUBCKT",
    "ADC_QUANTIZER_SUBCKT",
    "SWITCH_R_OFF_OHM",
    "CLOCK_HIGH_V",
    "TRACK_THRESHOLD_V",
    "SHARE_THRESHOLD_V",
    "nmos_model_card",
    "nmos_instance",
    "cell_subckt",
    "tia_subckt",
    "tia_supply_sources",
    "tia_instance",
    "adc_frontend_subckt",
    "adc_quantizer_subckt",
    "fmt",
]

NMOS_MODEL = "nmos_io"
CELL_SUBCKT = "cell_1t1r"
RRAM_FROZEN_SUBCKT = "rram_frozen"  # defined by every device model's library()
TIA_SUBCKT = "tia"
#: The TIA supplies of a deck (:func:`tia_supply_sources`): sources and their nodes.
TIA_SUPPLY_SOURCES = ("Vtia_dd", "Vtia_ss")
TIA_SUPPLY_NODES = ("tia_vdd", "tia_vss")
ADC_FRONTEND_SUBCKT = "adc_sc"
ADC_QUANTIZER_SUBCKT = "adc_quant"

#: Off resistance of a sampling switch, ohm. With the default 100 fF the hold time constant
#: is 0.1 s, seven orders of magnitude above a 160 ns conversion: leakage is negligible by
#: construction; the value only keeps the held nodes from floating in the matrix.
SWITCH_R_OFF_OHM = 1e12
#: Clock phases swing 0 -> CLOCK_HIGH_V; the switch threshold sits at half of it.
CLOCK_HIGH_V = 1.0
#: The tracking switch conducts only while its clock is above TRACK_THRESHOLD_V, so it opens
#: well before its clock reaches zero (a definite sampling instant).
TRACK_THRESHOLD_V = CLOCK_HIGH_V / 2
#: The share and reset switches conduct in proportion to their clock from zero up.
SHARE_THRESHOLD_V = 0.0
#: Internal resistance of the op-amp's gain node, ohm. Any value works (gm and C scale with
#: it); 1 kohm keeps the node's impedance and capacitance in ordinary ranges.
_TIA_R_GAIN_NODE_OHM = 1e3
#: Width of the TIA output stage's crossover, A: the sourced and sunk currents are
#: ``(sqrt(i^2 + e^2) +- i) / 2``, a smooth split (a ``max(i, 0)`` kink stalls Newton where
#: the output current crosses zero). It adds at most ``e`` to the rails' current, at
#: ``i = 0``: 0.1 uA against the quiescent 50 uA; 0.02 uA at 10 uA of output current.
_TIA_OUTPUT_SPLIT_A = 1e-7


def fmt(value: float) -> str:
    """A number as SPICE text, exact enough to round-trip a double (``repr`` precision)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a SPICE number")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written into a netlist")
    return repr(float(value))


def nmos_model_card(p: TransistorParams) -> str:
    """BSIM4 card of the access transistor: a 65 nm-class thick-oxide (2.5 V/3.3 V I/O) NMOS.

    Set from :class:`TransistorParams`: ``vth0``, ``toxe`` (also used as ``toxp`` and ``toxm``:
    a thick oxide has negligible poly-depletion/quantum offset, and the card is extracted at
    its own thickness), ``u0``, ``vsat``, ``rdsw``. Also set, and why:

    * ``k3=0``: BSIM4's default narrow-width coefficient (80) belongs to a generic
      0.18 um-era process and would raise the threshold by ~0.11 V at W = 0.6 um;
    * ``lpe0=0``: the default lateral pocket-doping length (174 nm) would add another ~0.15 V
      at L = 0.28 um.

    With both zeroed the threshold at the cell's geometry equals ``vth0`` (0.44 V measured for
    the defaults), which is what :attr:`TransistorParams.vth0_v` promises. Every other
    parameter is a BSIM4 4.8 default (``mobmod=0``, ``rdsmod=0``: bias-dependent internal
    source/drain resistance; no gate-tunnelling or GIDL currents, which a 5 nm oxide does not
    have at 3 V). Junction areas are left at 0, so the cell has no junction capacitance.

    Measured with ngspice 46 for the defaults (W/L = 0.6/0.28 um, vth0 = 0.45 V, toxe = 5 nm,
    u0 = 0.03 m^2/Vs, vsat = 8e4 m/s, rdsw = 300 ohm um): threshold 0.444 V; on-resistance
    at Vgs = 2.5 V 2.15 kohm at Vds = 0.1 V (2.04 kohm as Vds -> 0), in series with a
    25-250 kohm RRAM during a read; at Vgs = 1.2 V (SET compliance) 76 uA at Vds = 1.5 V and
    90 uA at 3 V; 241 uA at Vgs = 2.0 V, Vds = 3 V; 0.455 mA at Vgs = Vds = 3 V; off
    (Vgs = 0, Vds = 3 V) below 1 pA. ``tests/test_netlists_periphery.py`` checks these bands.
    """
    um = 1e-6
    nm = 1e-9
    return "\n".join([
        f"* Access transistor: BSIM4 (level=54, version 4.8) thick-oxide I/O NMOS, "
        f"W/L = {fmt(p.w_um)}/{fmt(p.l_um)} um (set on each instance).",
        "* Relies on ngspice's BSIM4 model; u0 in m^2/Vs, vsat in m/s, rdsw in ohm*um^wr (wr=1).",
        "* k3=0 and lpe0=0 remove generic-process narrow-width and pocket threshold shifts, so",
        "* the threshold at this geometry is vth0 (see netlists/periphery.py).",
        f".model {NMOS_MODEL} nmos level=54 version=4.8.2",
        f"+ toxe={fmt(p.toxe_nm * nm)} toxp={fmt(p.toxe_nm * nm)} toxm={fmt(p.toxe_nm * nm)} "
        f"epsrox=3.9",
        f"+ vth0={fmt(p.vth0_v)} u0={fmt(p.u0_m2_vs)} vsat={fmt(p.vsat_m_s)} "
        f"rdsw={fmt(p.rdsw_ohm_um)}",
        "+ k3=0 lpe0=0",
        f"* (instance geometry: w={fmt(p.w_um * um)} l={fmt(p.l_um * um)})",
    ]) + "\n"


def nmos_instance(name: str, drain: str, gate: str, source: str, bulk: str,
                  p: TransistorParams) -> str:
    """One ``M`` line of the access transistor (``name`` without the leading ``M``)."""
    return (f"M{name} {drain} {gate} {source} {bulk} {NMOS_MODEL} "
            f"w={fmt(p.w_um * 1e-6)} l={fmt(p.l_um * 1e-6)}")


def cell_subckt(transistor: TransistorParams, device: DeviceParams) -> str:
    """``.subckt cell_1t1r d g s params: n=`` : the 1T1R cell used for read solves.

    ``d`` is the row (driven) line, ``s`` the column (summing) line, ``g`` the word line.
    The RRAM (``rram_frozen``, state frozen at ``n``, from ``netlists.device``) runs from
    ``d`` (top electrode) to the internal node ``m`` (bottom electrode); the NMOS from ``m``
    (drain) to ``s`` (source), its body at ground. Needs ``rram_frozen`` and the NMOS card
    in the same deck; uses ngspice's ``params:`` subcircuit parameters.
    """
    return "\n".join([
        "* 1T1R read cell: frozen-state RRAM (top electrode at d) in series with the access",
        "* NMOS (drain m, source s, gate g, body at ground). Relies on subcircuit parameters",
        "* (params:) and on rram_frozen (netlists.device) and the NMOS card being in the deck.",
        f".subckt {CELL_SUBCKT} d g s params: n={fmt(device.n_init)}",
        f"X1 d m {RRAM_FROZEN_SUBCKT} n={{n}}",
        nmos_instance("1", "m", "g", "s", "0", transistor),
        f".ends {CELL_SUBCKT}",
    ]) + "\n"


def _smooth_clamp(x: str, lo: float, hi: float, knee: float) -> str:
    """B-source expression that is ``x`` between the rails and saturates smoothly at them.

    ``x - w*sp((x-hi)/w) + w*sp((lo-x)/w)`` with ``sp(z) = max(z,0) + ln(1+exp(-abs(z)))``,
    the overflow-free softplus (``exp`` of a large argument saturates silently in ngspice,
    ``limit()`` was seen to be replaced by 0, so neither is used). C1-smooth, slope 1 inside.
    """
    w = fmt(knee)

    def sp(z: str) -> str:
        return f"(max({z},0)+ln(1+exp(-abs({z}))))"

    up = sp(f"(({x})-({fmt(hi)}))/{w}")
    down = sp(f"(({fmt(lo)})-({x}))/{w}")
    return f"({x})-{w}*{up}+{w}*{down}"


def tia_supply_sources(p: TIAParams) -> str:
    """The two supply sources every TIA instance hangs on: ``Vtia_dd`` (node ``tia_vdd``, at
    ``supply_high_v``) and ``Vtia_ss`` (node ``tia_vss``, at ``supply_low_v``). One pair per
    deck; the energy they deliver is the TIAs' (``-integral v i dt`` of each)."""
    return "\n".join([
        "* TIA supplies: every TIA's quiescent bias and output-stage current comes from here.",
        f"{TIA_SUPPLY_SOURCES[0]} {TIA_SUPPLY_NODES[0]} 0 DC {fmt(p.supply_high_v)}",
        f"{TIA_SUPPLY_SOURCES[1]} {TIA_SUPPLY_NODES[1]} 0 DC {fmt(p.supply_low_v)}",
    ]) + "\n"


def tia_instance(name: str, inn: str, out: str, vos: float | None = None) -> str:
    """One ``X`` line of the TIA (``name`` with its leading ``X``) on the deck's supplies."""
    params = "" if vos is None else f" vos={fmt(float(vos))}"
    return f"{name} {inn} {out} {' '.join(TIA_SUPPLY_NODES)} {TIA_SUBCKT}{params}"


def tia_subckt(p: TIAParams) -> str:
    """``.subckt tia inn out vdd vss params: vos=`` : transimpedance amplifier, macro-model.

    The op-amp: a transconductor ``gm = A / R1`` driven by ``v(inp) - v(inn)`` (the
    non-inverting input ``inp`` sits at ground through the offset source ``vos``) into
    ``R1 || C1``: DC gain ``A = open_loop_gain``, one pole at ``gbw / A``. The output is the
    gain node through a smooth clamp to ``[v_rail_low, v_rail_high]`` (knee width
    ``v_clamp_knee_v``), an ideal voltage source. ``r_feedback_ohm`` from ``out`` to ``inn``.
    So ``v(out) = -I_in * R_f`` while the loop gain is large, the virtual ground at ``inn``
    is off by ``(v(out)/A + vos)``, and the output saturates at the rails.

    Supply (``vdd``, ``vss``; :func:`tia_supply_sources`): a constant ``i_quiescent_a`` from
    ``vdd`` to ``vss`` (the bias of every stage), and a class-B output stage: the current the
    output sources into its load, ``i = (v(out) - v(inn)) / R_f``, is drawn from ``vdd``, the
    current it sinks is returned into ``vss`` (split smoothly, ``_TIA_OUTPUT_SPLIT_A``). The
    load is the feedback resistor: the decks' TIA outputs drive only ideal buffers (``E``),
    which draw nothing. Both are current sources between a rail and ground, so the output
    voltage is what it was without them; only the rails' energy depends on them. The
    output's own source carries the load current to ground, so the power the rails deliver
    is ``(V_dd - V_ss) I_q + V_dd I_src + |V_ss| I_snk``: the load's share plus the output
    devices' drop. (Sensing the output current as ``i()`` of a 0 V source in series stalled
    the transient of a TIA held at its rail; the voltages across ``R_f`` do not.)

    Syntax: linear ``G`` (VCCS), ``B`` sources with ``max``/``abs``/``exp``/``ln``/``sqrt``,
    and ``params:`` (``vos`` can differ per instance; default from the config).

    Numerics: the closed loop is a pole at ``GBW / (1 + R_f / R_source)``. Keep its time
    constant above roughly a tenth of the transient's maximum step: a much faster TIA is a
    stiff node and trapezoidal integration rings on it (seen: GBW = 20 GHz, R_f = 40 kohm,
    1 ns steps: the output alternated by +-2 mV from step to step).
    """
    r1 = _TIA_R_GAIN_NODE_OHM
    gm = p.open_loop_gain / r1
    f_pole = p.gbw_hz / p.open_loop_gain
    c1 = 1.0 / (2.0 * math.pi * f_pole * r1)
    clamp = _smooth_clamp("v(ng)", p.v_rail_low_v, p.v_rail_high_v, p.v_clamp_knee_v)
    e2 = fmt(_TIA_OUTPUT_SPLIT_A ** 2)
    i_out = f"((v(out)-v(inn))/{fmt(p.r_feedback_ohm)})"
    return "\n".join([
        "* TIA: single-pole op-amp macro-model (DC gain A, pole at GBW/A, smooth output clamp",
        "* at the rails, input offset vos) with feedback resistor R_f; non-inverting input at",
        "* ground. v(out) ~ -I(inn)*R_f. Relies on G (VCCS), B-source max/abs/exp/ln, params:.",
        "* Supply: quiescent Iq from vdd to vss; the output's sourced current (through R_f) is",
        "* drawn from vdd and its sunk current returned into vss (smooth class-B split).",
        f"* A = {fmt(p.open_loop_gain)}, GBW = {fmt(p.gbw_hz)} Hz, R_f = "
        f"{fmt(p.r_feedback_ohm)} ohm, rails [{fmt(p.v_rail_low_v)}, {fmt(p.v_rail_high_v)}] V,"
        f" Iq = {fmt(p.i_quiescent_a)} A",
        f".subckt {TIA_SUBCKT} inn out vdd vss params: vos={fmt(p.v_offset_v)}",
        "Vos inp 0 DC {vos}",
        f"Gm 0 ng inp inn {fmt(gm)}",
        f"R1 ng 0 {fmt(r1)}",
        f"C1 ng 0 {fmt(c1)}",
        f"Bout out 0 V = {clamp}",
        f"Rf out inn {fmt(p.r_feedback_ohm)}",
        f"Iq vdd vss DC {fmt(p.i_quiescent_a)}",
        f"Bsrc vdd 0 I = 0.5*(sqrt({i_out}*{i_out}+{e2})+{i_out})",
        f"Bsnk 0 vss I = 0.5*(sqrt({i_out}*{i_out}+{e2})-{i_out})",
        f".ends {TIA_SUBCKT}",
    ]) + "\n"


def _switch(name: str, a: str, b: str, clock: str, threshold_v: float, adc: ADCParams) -> str:
    """A clock-controlled switch between ``a`` and ``b`` as a behavioural conductance.

    ``g = g_off + g_on * min(max((v(clock) - V_th) / (V_clk - V_th), 0), 1)``: off below the
    threshold ``V_th``, rising linearly to ``g_on = 1 / r_switch_on_ohm`` at the top of the
    clock swing ``V_clk``, like a MOS switch's channel conductance above threshold.
    Continuous in time, so the integrator needs no rejected steps to locate an abrupt toggle
    (see :func:`adc_frontend_subckt`).
    """
    g_on = 1.0 / adc.r_switch_on_ohm
    g_off = 1.0 / SWITCH_R_OFF_OHM
    span = CLOCK_HIGH_V - threshold_v
    gate = f"min(max((v({clock})-{fmt(threshold_v)})/{fmt(span)},0),1)"
    return f"B{name} {a} {b} I = v({a},{b})*({fmt(g_off)}+{fmt(g_on)}*{gate})"


def adc_frontend_subckt(adc: ADCParams) -> str:
    """``.subckt adc_sc vin acc phi1 phi2 phir``: multi-cycle sampling by charge sharing.

    A switched-capacitor circuit, not a behavioural sample-and-hold, so that what the deck
    computes is what a charge-sharing front-end does (finite switch conductance and settling,
    the hold on a capacitor, the reset) with nothing hidden in an expression. Per input bit k:

    * ``phi1`` (track): ``Cs`` follows ``vk = -v(vin)`` (an ideal unity-gain inverting
      buffer, ``E`` element, turns the negative TIA output into a positive sample);
      ``phi1`` opens during bit k's flat top: ``Cs`` holds ``V_k``.
    * ``phi2`` (share, non-overlapping with ``phi1``): ``Cs`` is connected to ``Ca`` (equal
      capacitance ``c_sample_f``): ``acc <- (acc + V_k) / 2``.

    ``phir`` shorts ``Ca`` before the first bit (``acc = 0``). After ``input_bits`` bits,
    ``acc = sum_k 2^(k - input_bits) V_k`` (bit 0, the LSB, comes first and is halved most).

    The switches are clock-controlled conductances (B-sources, see ``_switch``), not ngspice
    ``S`` elements: an ``S`` switch toggles abruptly at its threshold, a discontinuity the
    transient finds only by rejecting and halving steps. Measured on a 16x16 tile (an earlier
    clock plan): 473 accepted + 74 rejected time points with ``S`` switches against 281 + 2
    with conductances, for the same accumulated voltages. The tracking switch conducts above
    half its clock swing (a definite sample instant); the share and reset switches conduct in
    proportion to their clock. Timing and accuracy: ``netlists.array.ReadTiming``; keep
    ``r_switch_on_ohm * c_sample_f / 2`` at tens of ps or more (a much stiffer share rings
    under trapezoidal integration).
    Not modelled: charge injection and clock feed-through of the switches, kT/C noise.
    Syntax: ``B`` current sources with ``min``/``max``, ``E`` VCVS, ``C``.
    """
    c = fmt(adc.c_sample_f)
    return "\n".join([
        "* ADC front-end: inverting buffer + switched-capacitor charge-sharing accumulator.",
        "* phi1: Cs tracks -v(vin); phi2: Cs shares with Ca (acc <- (acc+V_k)/2); phir resets Ca.",
        "* Switches are clock-controlled conductances (B-sources); E is an ideal VCVS.",
        f".subckt {ADC_FRONTEND_SUBCKT} vin acc phi1 phi2 phir",
        "Einv vk 0 0 vin 1",
        _switch("1", "vk", "cs", "phi1", TRACK_THRESHOLD_V, adc),
        f"Cs cs 0 {c}",
        _switch("2", "cs", "acc", "phi2", SHARE_THRESHOLD_V, adc),
        f"Ca acc 0 {c}",
        _switch("r", "acc", "0", "phir", SHARE_THRESHOLD_V, adc),
        f".ends {ADC_FRONTEND_SUBCKT}",
    ]) + "\n"


def adc_quantizer_subckt(adc: ADCParams) -> str:
    """``.subckt adc_quant acc code params: voff= inl=``: the single 8-bit conversion.

    ``v(code) = min(max(floor(D/LSB + 0.5 + voff/LSB + inl*4*u*(1-u)), 0), 2^bits - 1)`` with
    ``D = v(acc)``, ``LSB = v_full_scale_v / 2^bits`` and ``u = min(max(D/v_full_scale_v, 0), 1)``
    (a bow-shaped INL, zero at both ends of the range and ``inl`` LSB at mid-scale). A
    behavioural B-source: it reads ``acc`` continuously, but only its value at the final time
    point, after the last charge-sharing phase, is the conversion. It loads nothing (the code
    node drives nothing), so its discontinuities do not disturb the transient. ``voff`` and
    ``inl`` are per instance, so the columns that share one physical ADC share its offset and
    INL. Conversion noise (``noise_v_rms``) is not in the deck: the deck is deterministic.
    Syntax: B-source with ``floor``, ``min``, ``max`` (``limit()`` is avoided on purpose).
    """
    levels = 2 ** adc.bits
    lsb = adc.v_full_scale_v / levels
    u = f"min(max(v(acc)/{fmt(adc.v_full_scale_v)},0),1)"
    expr = (f"min(max(floor(v(acc)/{fmt(lsb)}+0.5+({{voff}})/{fmt(lsb)}"
            f"+({{inl}})*4*({u})*(1-({u}))),0),{levels - 1})")
    return "\n".join([
        f"* ADC quantizer: {adc.bits}-bit, LSB = {fmt(lsb)} V, comparator offset voff (V),",
        "* bow INL of peak inl (LSB). Behavioural B-source with floor/min/max; the conversion is",
        "* its value at the final time point.",
        f".subckt {ADC_QUANTIZER_SUBCKT} acc code params: voff={fmt(adc.comparator_offset_v)} "
        f"inl={fmt(adc.inl_lsb)}",
        f"Bq code 0 V = {expr}",
        f".ends {ADC_QUANTIZER_SUBCKT}",
    ]) + "\n"
