"""SPICE deck of one 1T1R cell driven by a train of SET/RESET pulses with a read after each.

Pure function: configuration and a pulse schedule in, a complete ngspice deck out.

The cell is the switching device ``rram_dyn`` (top electrode on the bit line ``bl``, bottom
electrode on node ``m``) in series with the access NMOS (drain ``m``, gate ``wl``, source on the
source line ``sl``, body at ground). Three PWL sources drive it, as a 1T1R chip does:

========  ===================  ==================  =================
phase     bit line ``bl``      word line ``wl``    source line ``sl``
========  ===================  ==================  =================
SET       +V_set               v_gate_set_v        0
RESET     0                    v_gate_reset_v      +V_reset
read      v_read_v             v_gate_read_v       0
idle      0                    0                   0
========  ===================  ==================  =================

A SET drives vacancies into the bulk (the gate voltage sets the current compliance); a RESET
reverses the cell voltage. Each write pulse is followed by a read of ``drive.t_bit_s``; the
read current is taken at ``read_times`` (the end of each read's flat top, before its fall).
A first read precedes the first pulse. The cycle-to-cycle spread enters through node ``kc``,
a PWL source holding one rate multiplier per pulse, changed while no pulse is applied.

Relies on: PWL sources, ``.tran ... uic`` (the state capacitor's ``IC=`` holds the initial
state; without ``uic`` ngspice would start it at 0), ``.save`` of a subcircuit node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError
from netlists.periphery import NMOS_MODEL, fmt, nmos_model_card

__all__ = ["Pulse", "PulseDeck", "render_pulse_deck"]

#: Idle time between a write pulse and the following read, and after a read, s.
T_GAP_S = 10e-9


@dataclass(frozen=True)
class Pulse:
    """One write pulse: ``kind`` is ``"set"`` or ``"reset"``; amplitude (V) and width (s);
    ``gate_v`` the word line's voltage (V; default ``drive.v_gate_set_v`` or
    ``drive.v_gate_reset_v``)."""

    kind: str
    amplitude_v: float
    width_s: float
    gate_v: float | None = None


@dataclass(frozen=True)
class PulseDeck:
    text: str
    read_times_s: np.ndarray  # where each read current is sampled: one before each pulse + last
    t_stop_s: float


def _check_schedule(hw: HardwareConfig, pulses: Sequence[Pulse]) -> None:
    vmax = hw.device.v_valid_max_v
    for k, p in enumerate(pulses):
        if p.kind not in ("set", "reset"):
            raise ConfigError(f"pulse {k}: kind {p.kind!r} must be 'set' or 'reset'")
        if not (np.isfinite(p.amplitude_v) and 0.0 < p.amplitude_v <= vmax):
            raise ConfigError(
                f"pulse {k}: amplitude {p.amplitude_v!r} V is outside the model's validity "
                f"(0, {vmax!r}] V (device.v_valid_max_v)", field="amplitude_v")
        if not (np.isfinite(p.width_s) and 2 * hw.drive.t_edge_s < p.width_s <= 1e-3):
            raise ConfigError(
                f"pulse {k}: width {p.width_s!r} s must exceed two edges "
                f"(2 x drive.t_edge_s = {2 * hw.drive.t_edge_s!r} s) and be at most 1 ms",
                field="width_s")
        if p.gate_v is not None and not (np.isfinite(p.gate_v) and 0.0 <= p.gate_v <= 5.0):
            raise ConfigError(f"pulse {k}: gate voltage {p.gate_v!r} V is outside [0, 5] V",
                              field="gate_v")


def render_pulse_deck(hw: HardwareConfig, pulses: Sequence[Pulse], *, n0: float,
                      kc: Sequence[float] | None = None, kd: float = 1.0, wd: float = 1.0,
                      solver: SolverConfig | None = None, name: str = "pulses") -> PulseDeck:
    """A transient deck applying ``pulses`` to one cell, starting from state ``n0``.

    ``kc`` gives the cycle-to-cycle rate multiplier of each pulse (default all 1), ``kd`` and
    ``wd`` the device-to-device rate and window multipliers.
    """
    solver = solver or SolverConfig()
    _check_schedule(hw, pulses)
    model = device_model(hw)
    n_lo, n_hi = model.window(wd)
    if not (np.isfinite(n0) and n_lo * (1 - 1e-12) <= n0 <= n_hi * (1 + 1e-12)):
        raise ConfigError(f"initial state n0 = {n0!r} is outside the device's window "
                          f"[{n_lo!r}, {n_hi!r}]")
    kc_values = np.ones(len(pulses)) if kc is None else np.asarray(kc, float)
    if kc_values.shape != (len(pulses),) or np.any(~np.isfinite(kc_values)) \
            or np.any(kc_values <= 0):
        raise ConfigError("kc must hold one positive, finite multiplier per pulse")

    drv = hw.drive
    edge = drv.t_edge_s
    bl, wl, sl, kcp = [(0.0, 0.0)], [(0.0, 0.0)], [(0.0, 0.0)], [(0.0, 1.0)]
    reads: list[float] = []

    def rect(points: list[tuple[float, float]], t0: float, width: float, v: float) -> None:
        points += [(t0, 0.0), (t0 + edge, v), (t0 + width - edge, v), (t0 + width, 0.0)]

    def read(t: float) -> float:
        rect(bl, t, drv.t_bit_s, drv.v_read_v)
        rect(wl, t, drv.t_bit_s, hw.array.v_gate_read_v)
        reads.append(t + drv.t_bit_s - edge - 0.05 * drv.t_bit_s)
        return t + drv.t_bit_s + T_GAP_S

    t = read(T_GAP_S)
    for k, p in enumerate(pulses):
        kcp += [(t - 0.5 * T_GAP_S, kcp[-1][1]), (t - 0.4 * T_GAP_S, float(kc_values[k]))]
        if p.kind == "set":
            rect(bl, t, p.width_s, p.amplitude_v)
            rect(wl, t, p.width_s, drv.v_gate_set_v if p.gate_v is None else p.gate_v)
        else:
            rect(sl, t, p.width_s, p.amplitude_v)
            rect(wl, t, p.width_s, drv.v_gate_reset_v if p.gate_v is None else p.gate_v)
        t = read(t + p.width_s + T_GAP_S)
    t_stop = t

    def pwl(points: list[tuple[float, float]]) -> str:
        body = " ".join(f"{fmt(a)} {fmt(b)}" for a, b in points)
        return f"PWL({body})"

    tstep = min(drv.t_bit_s, min((p.width_s for p in pulses), default=drv.t_bit_s)) \
        / solver.steps_per_pulse
    text = "\n".join([
        f"{name}: 1T1R cell, {len(pulses)} write pulses, a {fmt(drv.v_read_v)} V read after each",
        ".options klu",
        "* Gear-2: trapezoidal integration rings on the read current (+-0.2% step to step)",
        ".options method=gear maxord=2",
        model.library(),
        nmos_model_card(hw.transistor),
        f"Vbl bl 0 {pwl(bl)}",
        f"Vwl wl 0 {pwl(wl)}",
        f"Vsl sl 0 {pwl(sl)}",
        f"Vkc kc 0 {pwl(kcp)}",
        f"Xd bl m kc rram_dyn n0={fmt(float(n0))} kd={fmt(float(kd))} wd={fmt(float(wd))}",
        f"M1 m wl sl 0 {NMOS_MODEL} w={fmt(hw.transistor.w_um * 1e-6)} "
        f"l={fmt(hw.transistor.l_um * 1e-6)}",
        "* uic: the state capacitor's IC= sets the initial state (see netlists/device.py)",
        f".tran {fmt(tstep)} {fmt(t_stop)} 0 {fmt(tstep)} uic",
        ".save i(vbl) v(xd.x) v(xd.th) v(m)",
        ".end",
    ]) + "\n"
    return PulseDeck(text=text, read_times_s=np.array(reads), t_stop_s=t_stop)
