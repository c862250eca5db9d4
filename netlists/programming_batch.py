"""SPICE deck of MANY independent 1T1R cells, each given (at most) one write pulse and a read.

Pure function: configuration and a list of cells in, a complete ngspice deck out. It is the
batched form of :func:`netlists.programming.render_pulse_deck` for a single pulse: the same
cell (``rram_dyn`` top electrode on the bit line, bottom electrode on node ``m``, access NMOS
from ``m`` to the source line, gate on the word line, body at ground), the same bias table
and the same timeline, so that one cell of a batch reproduces the single-cell deck (checked
in ``tests/test_surface_programming.py``). Calibration sweeps and the write-and-verify
driver (:mod:`circuitsim.write_verify`) solve hundreds of cells in one transient this way.

Each cell has its own state ``n0`` (the initial condition of its state node), its own
cycle-to-cycle multiplier ``kc`` (a DC source on its ``kc`` node: one pulse per deck, so one
draw per cell) and its own device-to-device multipliers ``kd`` and ``wd``. Cells are
electrically independent: the drive sources are ideal, so cells whose drive is identical
(same pulse kind, amplitude and gate voltage) share one set of bit-line / word-line /
source-line sources, and every cell has its own 0 V ammeter ``Vi<k>`` between its group's
bit line and its top electrode. Cells with different drives get their own sources.

Timeline (``t`` in s; ``T_GAP_S`` and the read of ``drive.t_bit_s`` as in
:mod:`netlists.programming`)::

    [read before]  T_GAP  -> read (t_bit) -> T_GAP            (only with read_before=True)
    pulse          one write pulse of width_s (idle cells: 0 V)  -> T_GAP
    read after     read (t_bit) -> T_GAP = t_stop

=========  ====================  ==================  ==================
phase      bit line ``bl<j>``    word line ``wl<j>``  source line ``sl<j>``
=========  ====================  ==================  ==================
SET        +amplitude            v_gate (compliance)  0
RESET      0                     v_gate               +amplitude
idle       0                     0                    0
read       v_read_v              v_gate_read_v        0
=========  ====================  ==================  ==================

Cell ``k``'s state is the vector ``v(xd<k>.x)`` and its current ``i(vi<k>)`` (positive into
the cell from the bit line); the read current is sampled at the ``read_times_s`` of the
returned :class:`BatchDeck` (end of each read's flat top, as in the single-cell deck).

Integration is Gear-2 (``.options method=gear maxord=2``): under ngspice's default
trapezoidal rule the read current rings from time step to time step by about +-0.2% (the
transistor's capacitances after the read edge: +-0.08 uS at 41.6 uS, measured on ngspice
46), which would swamp the small conductance changes of weak pulses; Gear damps it. The
state itself agrees with the trapezoidal single-cell deck to solver tolerance.

Relies on: PWL and DC sources, ``.tran ... uic`` (state capacitors' ``IC=``), ``.save`` of
subcircuit nodes and of source currents, BSIM4 (level 54).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError
from netlists.periphery import NMOS_MODEL, fmt, nmos_model_card
from netlists.programming import T_GAP_S

__all__ = ["BatchCell", "BatchDeck", "render_batch_deck", "MAX_CELLS"]

#: Most cells in one deck: beyond this one transient gets slow and its vectors large.
MAX_CELLS = 20000

_KINDS = ("set", "reset", None)


@dataclass(frozen=True)
class BatchCell:
    """One cell of a batch: its initial state, variation and the pulse it receives.

    ``kind`` is ``"set"``, ``"reset"`` or ``None`` (no pulse: the cell is only read).
    ``amplitude_v`` is the bit-line (SET) or source-line (RESET) voltage, V; ``v_gate_v`` the
    word-line voltage during the pulse, V (``None``: ``drive.v_gate_set_v`` for SET,
    ``drive.v_gate_reset_v`` for RESET). ``n0`` is the initial state, 1e26 m^-3; ``kc``,
    ``kd``, ``wd`` are the cycle-to-cycle rate, device-to-device rate and device-to-device
    window multipliers of ``rram_dyn``.
    """

    n0: float
    kind: str | None = None
    amplitude_v: float = 0.0
    v_gate_v: float | None = None
    kc: float = 1.0
    kd: float = 1.0
    wd: float = 1.0


@dataclass(frozen=True)
class BatchDeck:
    text: str
    n_cells: int
    #: where read currents are sampled: ``[before, after]`` or ``[after]``, s
    read_times_s: np.ndarray
    #: the time just before the pulse starts and just after it ends (state sampling), s
    pulse_window_s: tuple[float, float]
    t_stop_s: float


def _drive_of(hw: HardwareConfig, k: int, cell: BatchCell) -> tuple[str | None, float, float]:
    """Validated ``(kind, amplitude, gate)`` of cell ``k``; idle cells give ``(None, 0, 0)``."""
    if cell.kind not in _KINDS:
        raise ConfigError(f"cell {k}: kind {cell.kind!r} must be 'set', 'reset' or None")
    for label in ("n0", "kc", "kd", "wd"):
        value = getattr(cell, label)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"cell {k}: {label} = {value!r} must be a positive, finite number")
    d = hw.device
    lo, hi = d.n_min * cell.wd, d.n_max * cell.wd
    if not lo * (1 - 1e-12) <= cell.n0 <= hi * (1 + 1e-12):
        raise ConfigError(f"cell {k}: initial state n0 = {cell.n0!r} is outside the device's "
                          f"window [{lo!r}, {hi!r}] (device.n_min/n_max x wd)")
    if cell.kind is None:
        return None, 0.0, 0.0
    vmax = d.v_valid_max_v
    amp = cell.amplitude_v
    if not (isinstance(amp, (int, float, np.floating)) and math.isfinite(amp)
            and 0.0 <= amp <= vmax):
        raise ConfigError(f"cell {k}: amplitude {amp!r} V is outside the model's validity "
                          f"[0, {vmax!r}] V (device.v_valid_max_v)")
    gate = cell.v_gate_v
    if gate is None:
        gate = hw.drive.v_gate_set_v if cell.kind == "set" else hw.drive.v_gate_reset_v
    if not (isinstance(gate, (int, float, np.floating)) and math.isfinite(gate)
            and 0.0 <= gate <= 5.0):
        raise ConfigError(f"cell {k}: gate voltage {gate!r} V is outside [0, 5] V "
                          "(the range of drive.v_gate_set_v / v_gate_reset_v)")
    if amp == 0.0:
        return None, 0.0, 0.0
    return cell.kind, float(amp), float(gate)


def render_batch_deck(hw: HardwareConfig, cells: Sequence[BatchCell], *, width_s: float,
                      read_before: bool = True, solver: SolverConfig | None = None,
                      name: str = "pulse_batch", save_temperature: bool = False) -> BatchDeck:
    """One transient: every cell gets its own pulse (all of width ``width_s``) and a read.

    ``read_before`` adds a read before the pulse (then the timeline is exactly that of
    :func:`netlists.programming.render_pulse_deck` for one pulse). ``save_temperature`` also
    saves each cell's temperature-rise node ``v(xd<k>.th)``.
    """
    solver = solver or SolverConfig()
    cells = list(cells)
    if not cells:
        raise ConfigError("a batch deck needs at least one cell")
    if len(cells) > MAX_CELLS:
        raise ConfigError(f"{len(cells)} cells is too many for one deck (at most {MAX_CELLS})")
    drv = hw.drive
    edge = drv.t_edge_s
    if not (isinstance(width_s, (int, float, np.floating)) and math.isfinite(width_s)
            and 2 * edge < width_s <= 1e-3):
        raise ConfigError(f"width_s = {width_s!r} s must exceed two edges "
                          f"(2 x drive.t_edge_s = {2 * edge!r} s) and be at most 1 ms")
    drives = [_drive_of(hw, k, c) for k, c in enumerate(cells)]

    # Timeline (shared by every group).
    reads: list[float] = []
    read_windows: list[float] = []
    t = T_GAP_S
    if read_before:
        read_windows.append(t)
        reads.append(t + drv.t_bit_s - edge - 0.05 * drv.t_bit_s)
        t += drv.t_bit_s + T_GAP_S
    t_pulse = t
    t = t_pulse + width_s + T_GAP_S
    read_windows.append(t)
    reads.append(t + drv.t_bit_s - edge - 0.05 * drv.t_bit_s)
    t_stop = t + drv.t_bit_s + T_GAP_S

    def rect(points: list[tuple[float, float]], t0: float, width: float, v: float) -> None:
        points += [(t0, 0.0), (t0 + edge, v), (t0 + width - edge, v), (t0 + width, 0.0)]

    def pwl(points: list[tuple[float, float]]) -> str:
        return "PWL(" + " ".join(f"{fmt(a)} {fmt(b)}" for a, b in points) + ")"

    groups: dict[tuple[str | None, float, float], int] = {}
    for drive in drives:
        groups.setdefault(drive, len(groups))
    kc_nodes: dict[float, int] = {}
    for c in cells:
        kc_nodes.setdefault(float(c.kc), len(kc_nodes))

    lines = [
        f"{name}: {len(cells)} independent 1T1R cells, one write pulse of {fmt(float(width_s))} s "
        f"each and a {fmt(drv.v_read_v)} V read (netlists/programming_batch.py)",
        ".options klu",
        "* Gear-2 integration: with the default trapezoidal rule the currents through the",
        "* transistors' capacitances ring from step to step (+-0.2% of a read current, seen",
        "* on ngspice 46); Gear damps that, so reads are exact to solver tolerance",
        ".options method=gear maxord=2",
        device_model(hw).library(),
        nmos_model_card(hw.transistor),
        "* drive groups: ideal bit-line / word-line / source-line sources shared by the cells",
        "* that receive the same pulse (kind, amplitude, gate); idle groups are only read",
    ]
    for (kind, amp, gate), j in groups.items():
        bl, wl, sl = [(0.0, 0.0)], [(0.0, 0.0)], [(0.0, 0.0)]
        if read_before:
            rect(bl, read_windows[0], drv.t_bit_s, drv.v_read_v)
            rect(wl, read_windows[0], drv.t_bit_s, hw.array.v_gate_read_v)
        if kind == "set":
            rect(bl, t_pulse, width_s, amp)
            rect(wl, t_pulse, width_s, gate)
        elif kind == "reset":
            rect(sl, t_pulse, width_s, amp)
            rect(wl, t_pulse, width_s, gate)
        rect(bl, read_windows[-1], drv.t_bit_s, drv.v_read_v)
        rect(wl, read_windows[-1], drv.t_bit_s, hw.array.v_gate_read_v)
        label = "idle" if kind is None else f"{kind} {fmt(amp)} V, gate {fmt(gate)} V"
        lines += [f"* group {j}: {label}",
                  f"Vbl{j} bl{j} 0 {pwl(bl)}",
                  f"Vwl{j} wl{j} 0 {pwl(wl)}",
                  f"Vsl{j} sl{j} 0 {pwl(sl)}" if kind == "reset" else f"Vsl{j} sl{j} 0 0"]
    lines.append("* cycle-to-cycle rate multipliers (one DC node per distinct value)")
    for value, j in kc_nodes.items():
        lines.append(f"Vkc{j} kc{j} 0 {fmt(value)}")
    w = fmt(hw.transistor.w_um * 1e-6)
    length = fmt(hw.transistor.l_um * 1e-6)
    lines.append("* cells: ammeter Vi<k> (bit line -> top electrode), rram_dyn, access NMOS")
    for k, (c, drive) in enumerate(zip(cells, drives)):
        j = groups[drive]
        lines += [
            f"Vi{k} bl{j} t{k} 0",
            f"Xd{k} t{k} m{k} kc{kc_nodes[float(c.kc)]} rram_dyn n0={fmt(float(c.n0))} "
            f"kd={fmt(float(c.kd))} wd={fmt(float(c.wd))}",
            f"M{k} m{k} wl{j} sl{j} 0 {NMOS_MODEL} w={w} l={length}",
        ]
    tstep = min(drv.t_bit_s, float(width_s)) / solver.steps_per_pulse
    saves = [f"v(xd{k}.x)" for k in range(len(cells))] + [f"i(vi{k})" for k in range(len(cells))]
    if save_temperature:
        saves += [f"v(xd{k}.th)" for k in range(len(cells))]
    lines += [
        "* uic: each state capacitor's IC= sets the initial state (see netlists/device.py)",
        f".tran {fmt(tstep)} {fmt(t_stop)} 0 {fmt(tstep)} uic",
        *(".save " + " ".join(saves[i:i + 16]) for i in range(0, len(saves), 16)),
        ".end",
    ]
    return BatchDeck(text="\n".join(lines) + "\n", n_cells=len(cells),
                     read_times_s=np.array(reads),
                     pulse_window_s=(t_pulse, t_pulse + width_s), t_stop_s=t_stop)
