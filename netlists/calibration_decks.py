"""SPICE decks of the calibration sweeps: 1T1R cell read, TIA transfer, ADC front-end.

Pure functions: configuration and sweep values in, a complete ngspice deck out (title,
elements, ``.options klu``, one analysis card, ``.save``, ``.end``; no ``.control`` block).
The surfaces in ``calibration/surfaces/`` (``cell_read``, ``tia``, ``adc``) render these decks,
solve them and condense the results; nothing here runs a simulator. Every deck is built from
the same blocks as the tile deck (``netlists.device``, ``netlists.periphery``), so a surface
measures the circuit the tile solves.

Sweeps over an index
--------------------
A DC sweep here never steps the physical source itself: ``.dc Vidx 0 n-1 1`` steps an index
node through the whole numbers 0 .. n-1 (exact in floating point), and a linear controlled
source makes the swept quantity ``lo + step * v(idx)`` (``E`` for a voltage, ``G`` for a
current). The sweep then has exactly ``n`` points at known values; stepping a source from
``lo`` to ``hi`` by ``step`` directly could gain or lose the last point to rounding.

Decks
-----
``render_cell_sweep_deck``  independent 1T1R cells (one per state) between one swept row-line
                            node and their own grounded column nodes; the gate at a given
                            voltage; ``.dc`` over the cell voltage.
``render_tia_dc_deck``      one TIA fed by a swept current source with a parallel source
                            resistance (the column seen from its TIA); ``.dc``.
``render_tia_load_dc_deck`` one TIA per source resistance, all on one swept input
                            current; ``.dc``.
``render_tia_pulse_deck``   one TIA per input current, each fed two bit-serial input pulses
                            of that current (as a bit-serial read applies them); ``.tran``.
``render_adc_weights_deck`` ADC front-ends clocked as in the tile deck, each fed a PWL
                            stand-in for the TIA output (one-hot bits, all zero, a probe
                            staircase); ``.tran``.
``render_adc_transfer_deck`` the quantizer alone over a swept accumulated voltage; ``.dc``.
``render_adc_noise_deck``   quantizers at fixed accumulated voltages, each behind a seeded
                            Gaussian source (input-referred conversion noise) that draws a
                            new value every ``t_draw_s``; ``.tran``.

ngspice syntax relied on (beyond that of the blocks): ``E``/``G`` linear controlled sources,
``PWL`` sources (each PWL corner is a transient breakpoint: a time point falls on it),
``TRRANDOM(1 TS TD range offset)`` (a uniform value in ``[offset - range, offset + range]``,
added to the source's DC value, held for ``TS``; a new draw and a breakpoint at every multiple
of ``TS``) and ``.option seed=N``.

Seeded noise, and why not ``TRNOISE``: ngspice 46 reseeds its uniform generator (the one
``TRRANDOM`` type 1 draws from) when it reads ``.option seed=N``, so a deck gives the same
draws on every run, in a fresh process or in a reused shared-library worker (checked). Its
Gaussian draws are not reproducible: ``TRNOISE`` uses a generator the option does not reseed
(two batch runs with one seed differ), and ``TRRANDOM`` type 2 (Gaussian) gives the same
values in a fresh process but different ones on the second run in the same worker
(presumably a spare value the Gaussian generator keeps between runs). So the noise deck draws two uniforms per
conversion and makes the Gaussian itself (Box-Muller, in a ``B`` source):
``n = sigma sqrt(-2 ln u1) cos(2 pi u2)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from netlists.adc_model import adc_model
from netlists.array import ReadTiming
from netlists.config import HardwareConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError
from netlists.periphery import (
    CELL_SUBCKT,
    cell_subckt,
    fmt,
    nmos_model_card,
    tia_instance,
    tia_subckt,
    tia_supply_sources,
)

__all__ = [
    "check_count",
    "check_range",
    "linear_values",
    "bit_pulse_pwl",
    "render_cell_sweep_deck",
    "render_tia_dc_deck",
    "render_tia_load_dc_deck",
    "render_tia_pulse_deck",
    "render_adc_weights_deck",
    "render_adc_transfer_deck",
    "render_adc_noise_deck",
]


# ----------------------------------------------------------------------------- checks

def check_count(name: str, n: object, *, lo: int = 2, hi: int = 100_000) -> int:
    """``n`` as a whole number in ``[lo, hi]``, or ConfigError naming ``name``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ConfigError(f"{name} = {n!r} must be a whole number in [{lo}, {hi}]")
    if not lo <= int(n) <= hi:
        raise ConfigError(f"{name} = {n!r} is out of range: allowed [{lo}, {hi}]")
    return int(n)


def check_range(fields: tuple[str, str], lo: object, hi: object, *,
                allowed: tuple[float, float], unit: str = "") -> tuple[float, float]:
    """``(lo, hi)`` with ``lo < hi``, both finite and inside ``allowed``, or ConfigError.

    ``fields`` names the two fields (``("cell_read.v_cell_rel_min", "..._max")``); the
    message names the one that is wrong, its value and the allowed range.
    """
    unit_s = f" {unit}" if unit else ""
    values = []
    for field, value in zip(fields, (lo, hi)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ConfigError(f"{field} = {value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{field} = {value!r} must be finite")
        if not allowed[0] <= value <= allowed[1]:
            raise ConfigError(f"{field} = {value!r}{unit_s} is out of range: allowed "
                              f"[{allowed[0]:g}, {allowed[1]:g}]{unit_s}")
        values.append(float(value))
    if not values[0] < values[1]:
        raise ConfigError(f"{fields[0]} = {values[0]!r} must be below {fields[1]} = "
                          f"{values[1]!r}")
    return values[0], values[1]


def linear_values(lo: float, hi: float, n: int) -> np.ndarray:
    """``lo + step * k`` for ``k = 0 .. n-1``, ``step = (hi - lo) / (n - 1)``: the values an
    index sweep of this module produces (the last one equals ``hi`` up to rounding)."""
    step = (hi - lo) / (n - 1)
    return lo + step * np.arange(n)


def _save_lines(vectors: Sequence[str], per_line: int = 16) -> list[str]:
    return [".save " + " ".join(vectors[k:k + per_line])
            for k in range(0, len(vectors), per_line)]


def _index_sweep(node: str, ref: str, lo: float, hi: float, n: int, *,
                 current: bool) -> list[str]:
    """Lines that make ``node`` (a voltage vs ground, or a current into it) equal to
    ``lo + step * v(idx)``; plus the ``.dc`` card over the index (last line)."""
    step = (hi - lo) / (n - 1)
    if current:
        # Current pushed into `node`: G flows from its first node through itself to the
        # second, so "0 node" pushes into node.
        lines = [f"Ilo 0 {node} DC {fmt(lo)}",
                 f"Gstep 0 {node} idx 0 {fmt(step)}"]
    else:
        lines = [f"Vlo {ref} 0 DC {fmt(lo)}",
                 f"Estep {node} {ref} idx 0 {fmt(step)}"]
    return ["* index sweep: the swept quantity is lo + step * v(idx), v(idx) = 0 .. n-1",
            "Vidx idx 0 DC 0", *lines, f".dc Vidx 0 {n - 1} 1"]


def bit_pulse_pwl(levels: Sequence[float], t_bit_s: float, t_edge_s: float) -> str:
    """PWL text of a bit-serial pulse train, shaped as the tile deck drives its rows.

    Bit ``k`` occupies ``[k T, (k+1) T]``: it rises from 0 over ``[k T, k T + t_edge]`` to
    ``levels[k]``, stays flat, and falls to 0 over ``[(k+1) T - t_edge, (k+1) T]``.
    """
    T, te = t_bit_s, t_edge_s
    points = ["0 0"]
    for k, level in enumerate(levels):
        lv = fmt(float(level)) if level != 0 else "0"
        points.append(f"{fmt(k * T + te)} {lv}")
        points.append(f"{fmt((k + 1) * T - te)} {lv}")
        points.append(f"{fmt((k + 1) * T)} 0")
    return "PWL(" + " ".join(points) + ")"


# -------------------------------------------------------------------------- cell read

def render_cell_sweep_deck(hw: HardwareConfig, states: Sequence[float], v_gate_v: float,
                           v_lo: float, v_hi: float, n_v: int, *,
                           name: str = "cell_sweep") -> str:
    """``.dc`` deck of independent 1T1R cells, one per state, over the cell voltage.

    Every cell ``Xc<k>`` (``cell_1t1r``, state ``states[k]``) runs from the row-line node
    ``row`` (the RRAM's top electrode) to its own column-line node ``col<k>``, which the
    zero-volt source ``Vcol<k>`` holds at ground: ``i(vcol<k>)`` is the cell current from
    the row line to the column line. ``v(row)`` is swept over ``n_v`` values from ``v_lo``
    to ``v_hi`` (an index sweep), so ``v(row)`` *is* the voltage across the cell. All gates
    sit on ``wl`` at ``v_gate_v``: with the column node at ground that is the gate-to-column
    (gate-to-source) voltage. Saved: ``v(row)`` and ``i(vcol<k>)``.
    """
    n = np.asarray(states, dtype=float).ravel()
    if n.size == 0:
        raise ConfigError("states is empty")
    lo, hi = hw.device.n_min, hw.device.n_max
    if not np.all(np.isfinite(n)) or np.any((n < lo) | (n > hi)):
        raise ConfigError(f"states must lie in [device.n_min, device.n_max] = [{lo!r}, {hi!r}]")
    check_count("n_v", n_v)
    vmax = hw.device.v_valid_max_v
    if not (math.isfinite(v_lo) and math.isfinite(v_hi) and v_lo < v_hi) \
            or max(abs(v_lo), abs(v_hi)) > vmax:
        raise ConfigError(f"cell voltages [{v_lo!r}, {v_hi!r}] V must be increasing and within "
                          f"+-device.v_valid_max_v = {vmax!r} V")
    if not 0.0 <= v_gate_v <= 5.0:
        raise ConfigError(f"v_gate_v = {v_gate_v!r} V is outside [0, 5] V")
    out = [f"{name}: {n.size} isolated 1T1R cells, gate at {fmt(float(v_gate_v))} V, "
           f"cell voltage swept {fmt(float(v_lo))} .. {fmt(float(v_hi))} V in {n_v} points",
           "* Rendered by netlists.calibration_decks.render_cell_sweep_deck: every cell from the",
           "* swept row node to its own grounded column node; i(vcol<k>) is its current.",
           ".options klu", "", device_model(hw).library(), nmos_model_card(hw.transistor),
           cell_subckt(hw.transistor, hw.device),
           f"Vwl wl 0 DC {fmt(float(v_gate_v))}"]
    for k, nk in enumerate(n):
        out.append(f"Xc{k} row wl col{k} {CELL_SUBCKT} n={fmt(float(nk))}")
        out.append(f"Vcol{k} col{k} 0 DC 0")
    out += _index_sweep("row", "rowlo", float(v_lo), float(v_hi), n_v, current=False)
    out += _save_lines(["v(row)"] + [f"i(vcol{k})" for k in range(n.size)])
    out.append(".end")
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------- TIA

def render_tia_dc_deck(hw: HardwareConfig, i_lo: float, i_hi: float, n_i: int,
                       r_source_ohm: float, *, name: str = "tia_dc") -> str:
    """``.dc`` deck of one TIA (``Xtia``, input ``tin``, output ``tout``) over its input.

    The input is a Norton source: the current ``lo + step * v(idx)`` pushed into ``tin`` (the
    column current a perfect virtual ground would take) in parallel with ``r_source_ohm``
    from ``tin`` to ground (the column's cells seen from the TIA, their rows at low-impedance
    drivers). Offset, gain, bandwidth and rails are the config's. Saved: ``v(tin)`` (the
    virtual ground) and ``v(tout)``.
    """
    check_count("n_i", n_i)
    if not (math.isfinite(i_lo) and math.isfinite(i_hi) and i_lo < i_hi):
        raise ConfigError(f"input currents [{i_lo!r}, {i_hi!r}] A must be finite and increasing")
    if not (math.isfinite(r_source_ohm) and r_source_ohm > 0):
        raise ConfigError(f"r_source_ohm = {r_source_ohm!r} must be a positive resistance")
    out = [f"{name}: TIA transfer, input current swept {fmt(float(i_lo))} .. "
           f"{fmt(float(i_hi))} A in {n_i} points, source resistance {fmt(r_source_ohm)} ohm",
           "* Rendered by netlists.calibration_decks.render_tia_dc_deck.",
           ".options klu", "", tia_subckt(hw.tia), tia_supply_sources(hw.tia),
           f"Rsrc tin 0 {fmt(r_source_ohm)}",
           tia_instance("Xtia", "tin", "tout")]
    out += _index_sweep("tin", "", float(i_lo), float(i_hi), n_i, current=True)
    out += _save_lines(["v(tin)", "v(tout)"])
    out.append(".end")
    return "\n".join(out) + "\n"


def render_tia_load_dc_deck(hw: HardwareConfig, i_lo: float, i_hi: float, n_i: int,
                            r_sources_ohm: Sequence[float], *,
                            name: str = "tia_load_dc") -> str:
    """``.dc`` deck of one TIA per source resistance, all fed the same swept current.

    TIA ``k`` (input ``tin<k>``, output ``tout<k>``) sits on the Norton source of
    :func:`render_tia_dc_deck` with ``r_sources_ohm[k]`` to ground; its current is
    ``lo + step * v(idx)`` through a unit VCCS from the index node, so one sweep gives every
    load's transfer. Saved: ``v(tout<k>)``.
    """
    check_count("n_i", n_i)
    if not (math.isfinite(i_lo) and math.isfinite(i_hi) and i_lo < i_hi):
        raise ConfigError(f"input currents [{i_lo!r}, {i_hi!r}] A must be finite and increasing")
    r = np.asarray(r_sources_ohm, dtype=float).ravel()
    if r.size == 0 or not np.all(np.isfinite(r) & (r > 0)):
        raise ConfigError(f"r_sources_ohm = {r_sources_ohm!r} must be positive resistances")
    step = (i_hi - i_lo) / (n_i - 1)
    out = [f"{name}: {r.size} TIAs on their own source resistances, input current swept "
           f"{fmt(float(i_lo))} .. {fmt(float(i_hi))} A in {n_i} points",
           "* Rendered by netlists.calibration_decks.render_tia_load_dc_deck.",
           ".options klu", "", tia_subckt(hw.tia), tia_supply_sources(hw.tia),
           "* index sweep: the current is lo + step * v(idx), v(idx) = 0 .. n-1",
           "Vidx idx 0 DC 0"]
    for k, rk in enumerate(r):
        out.append(f"Ilo{k} 0 tin{k} DC {fmt(float(i_lo))}")
        out.append(f"Gstep{k} 0 tin{k} idx 0 {fmt(step)}")
        out.append(f"Rsrc{k} tin{k} 0 {fmt(float(rk))}")
        out.append(tia_instance(f"Xtia{k}", f"tin{k}", f"tout{k}"))
    out.append(f".dc Vidx 0 {n_i - 1} 1")
    out += _save_lines([f"v(tout{k})" for k in range(r.size)])
    out.append(".end")
    return "\n".join(out) + "\n"


def render_tia_pulse_deck(hw: HardwareConfig, currents: Sequence[float],
                          r_source_ohm: float | Sequence[float],
                          timing: ReadTiming, *, steps_per_bit: int,
                          name: str = "tia_pulse") -> str:
    """``.tran`` deck: one TIA per input current, each fed two equal bit-serial pulses.

    TIA ``k`` (input ``tin<k>``, output ``tout<k>``) gets the current ``currents[k]`` as two
    consecutive one-bit pulses shaped as the tile deck's row drive (:func:`bit_pulse_pwl`:
    rise over ``t_edge`` from ``k T``, flat, fall over the last ``t_edge``), in parallel with
    ``r_source_ohm`` to ground (one value for all, or one per current). Bit 0 starts from
    rest; bit 1 follows an equal bit. A
    zero-valued PWL ``Vmark`` has its corners at the front-end's sample instants
    (``timing.sample_times_s()``), so the transient has a time point exactly on each. The
    transient runs to ``2 T`` with the tile deck's step (``t_bit_s / steps_per_bit``) and
    ``uic``, as the tile deck does. Saved: ``v(tout<k>)``.
    """
    i = np.asarray(currents, dtype=float).ravel()
    if i.size == 0 or not np.all(np.isfinite(i)):
        raise ConfigError("currents must be a non-empty list of finite numbers")
    check_count("steps_per_bit", steps_per_bit, lo=1)
    r_src = np.broadcast_to(np.asarray(r_source_ohm, dtype=float), i.shape) \
        if np.ndim(r_source_ohm) == 0 else np.asarray(r_source_ohm, dtype=float)
    if r_src.shape != i.shape:
        raise ConfigError(f"r_source_ohm has {r_src.size} values for {i.size} currents")
    if not np.all(np.isfinite(r_src) & (r_src > 0)):
        raise ConfigError(f"r_source_ohm = {r_source_ohm!r} must be positive resistances")
    T, te = timing.t_bit_s, timing.t_edge_s
    bits = 2
    samples = timing.sample_times_s()[:bits]
    marks = "PWL(0 0 " + " ".join(f"{fmt(float(t))} 0" for t in samples) + \
        f" {fmt(bits * T)} 0)"
    out = [f"{name}: {i.size} TIAs, each fed two bit-serial pulses of its input current",
           "* Rendered by netlists.calibration_decks.render_tia_pulse_deck.",
           ".options klu", "", tia_subckt(hw.tia), tia_supply_sources(hw.tia),
           "* Breakpoints at the sample instants (the source drives nothing).",
           f"Vmark mark 0 {marks}"]
    for k, ik in enumerate(i):
        out.append(f"Iin{k} 0 tin{k} {bit_pulse_pwl([ik, ik], T, te)}")
        out.append(f"Rsrc{k} tin{k} 0 {fmt(float(r_src[k]))}")
        out.append(tia_instance(f"Xtia{k}", f"tin{k}", f"tout{k}"))
    tstep = T / steps_per_bit
    out.append(f".tran {fmt(tstep)} {fmt(bits * T)} 0 {fmt(tstep)} uic")
    out += _save_lines([f"v(tout{k})" for k in range(i.size)])
    out.append(".end")
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------- ADC

def render_adc_weights_deck(hw: HardwareConfig, inputs: np.ndarray, timing: ReadTiming, *,
                            steps_per_bit: int, name: str = "adc_weights") -> str:
    """``.tran`` deck: ADC front-ends clocked as in the tile deck, one per input sequence.

    ``inputs`` is (m, input_bits): front-end ``j`` (``Xadc<j>``, accumulator ``acc<j>``) is
    fed ``-inputs[j, k]`` during bit ``k`` (a PWL stand-in for the TIA output, negative for
    a positive sample, shaped as the row drive: :func:`bit_pulse_pwl`), so its sample of bit
    ``k`` is ``inputs[j, k]``. Clocks (``phir``, ``phi1``, ``phi2``), step, stop time and
    ``uic`` are those of ``netlists.array.render_tile_deck``. Saved: ``v(acc<j>)``; at the
    final time point it is the accumulated voltage ``D_j``.
    """
    v = np.asarray(inputs, dtype=float)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] != timing.input_bits:
        raise ConfigError(f"inputs has shape {v.shape}; expected (m >= 1, "
                          f"{timing.input_bits})")
    if not np.all(np.isfinite(v)):
        raise ConfigError("inputs must be finite")
    check_count("steps_per_bit", steps_per_bit, lo=1)
    T, te = timing.t_bit_s, timing.t_edge_s
    adc = adc_model(hw)
    out = [f"{name}: {v.shape[0]} ADC front-ends clocked as in the tile deck",
           "* Rendered by netlists.calibration_decks.render_adc_weights_deck; vin<j> stands in",
           "* for a TIA output (-V_k during bit k).",
           ".options klu", "", adc.frontend_subckt(),
           f"Vphir phir 0 {timing.phir_pwl()}",
           f"Vphi1 phi1 0 {timing.phi1_pwl()}",
           f"Vphi2 phi2 0 {timing.phi2_pwl()}"]
    for j, row in enumerate(v):
        if np.all(row == 0):
            out.append(f"Vin{j} vin{j} 0 DC 0")
        else:
            out.append(f"Vin{j} vin{j} 0 {bit_pulse_pwl(-row, T, te)}")
        out.append(adc.frontend_instance(f"Xadc{j}", f"vin{j}", f"acc{j}"))
    tstep = T / steps_per_bit
    out.append(f".tran {fmt(tstep)} {fmt(timing.t_stop_s)} 0 {fmt(tstep)} uic")
    out += _save_lines([f"v(acc{j})" for j in range(v.shape[0])])
    out.append(".end")
    return "\n".join(out) + "\n"


def render_adc_transfer_deck(hw: HardwareConfig, d_lo: float, d_hi: float, n_d: int, *,
                             name: str = "adc_transfer") -> str:
    """``.dc`` deck of the quantizer alone (``Xq``, offset and INL of the config) over ``D``.

    ``v(acc) = d_lo + step * v(idx)`` (index sweep, ``n_d`` points). Saved: ``v(acc)``,
    ``v(code)``.
    """
    check_count("n_d", n_d, hi=10_000_000)
    if not (math.isfinite(d_lo) and math.isfinite(d_hi) and d_lo < d_hi):
        raise ConfigError(f"accumulated voltages [{d_lo!r}, {d_hi!r}] V must be increasing")
    adc = adc_model(hw)
    out = [f"{name}: ADC quantizer, accumulated voltage swept {fmt(float(d_lo))} .. "
           f"{fmt(float(d_hi))} V in {n_d} points",
           "* Rendered by netlists.calibration_decks.render_adc_transfer_deck.",
           ".options klu", "", adc.quantizer_subckt(),
           adc.quantizer_instance("Xq", "acc", "code")]
    out += _index_sweep("acc", "acclo", float(d_lo), float(d_hi), n_d, current=False)
    out += _save_lines(["v(acc)", "v(code)"])
    out.append(".end")
    return "\n".join(out) + "\n"


def render_adc_noise_deck(hw: HardwareConfig, d_values: Sequence[float], draws: int,
                          seed: int, *, t_draw_s: float = 1e-9,
                          name: str = "adc_noise") -> str:
    """``.tran`` deck: noisy conversions of fixed accumulated voltages, seeded.

    For each ``d_values[k]``: ``Vd<k>`` holds node ``d<k>`` at that voltage; ``Bn<k>`` adds
    the input-referred conversion noise in series, a Gaussian of standard deviation
    ``adc.noise_v_rms`` made by Box-Muller from the uniform draws ``Vu<k>`` and ``Vw<k>``
    (``TRRANDOM`` type 1 on [0, 1], a new draw held for each ``t_draw_s``); the quantizer
    ``Xq<k>`` (offset and INL of the config) converts ``v(a<k>) = D_k + noise``. The
    transient runs ``draws`` draws long: draw ``m`` holds on ``(m t_draw, (m+1) t_draw]``
    (a breakpoint at each end; ``t = 0`` holds no draw to use). ``.option seed=seed`` makes
    the draws reproducible (see the module docstring). Saved: ``v(a<k>)``, ``v(code<k>)``.
    """
    d = np.asarray(d_values, dtype=float).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ConfigError("d_values must be a non-empty list of finite numbers")
    check_count("draws", draws, lo=1)
    check_count("seed", seed, lo=1, hi=2**31 - 1)
    if not (math.isfinite(t_draw_s) and t_draw_s > 0):
        raise ConfigError(f"t_draw_s = {t_draw_s!r} must be a positive time")
    sigma = fmt(hw.adc.noise_v_rms)
    uniform = f"TRRANDOM(1 {fmt(t_draw_s)} 0 0.5 0.5)"
    adc = adc_model(hw)
    out = [f"{name}: {d.size} noisy ADC conversions, {draws} draws each, seed {seed}",
           "* Rendered by netlists.calibration_decks.render_adc_noise_deck. Vu/Vw: uniform",
           "* draws on [0, 1]; Bn: Box-Muller Gaussian of sigma = adc.noise_v_rms (1 - u keeps",
           "* the logarithm's argument in (0, 1]).",
           ".options klu", f".option seed={int(seed)}", "", adc.quantizer_subckt()]
    for k, dk in enumerate(d):
        out.append(f"Vd{k} d{k} 0 DC {fmt(float(dk))}")
        out.append(f"Vu{k} u{k} 0 DC 0 {uniform}")
        out.append(f"Vw{k} w{k} 0 DC 0 {uniform}")
        out.append(f"Bn{k} a{k} d{k} V = {sigma}*sqrt(-2*ln(max(1-v(u{k}),1e-300)))"
                   f"*cos({fmt(2 * math.pi)}*v(w{k}))")
        out.append(adc.quantizer_instance(f"Xq{k}", f"a{k}", f"code{k}"))
    step = t_draw_s / 4
    out.append(f".tran {fmt(step)} {fmt(draws * t_draw_s)} 0 {fmt(step)}")
    out += _save_lines([f"v(a{k})" for k in range(d.size)]
                       + [f"v(code{k})" for k in range(d.size)])
    out.append(".end")
    return "\n".join(out) + "\n"
