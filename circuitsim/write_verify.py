"""Write-and-verify of many 1T1R cells at once, driven against ngspice.

Two layers:

:func:`run_batch`
    One write pulse (or none) and a read on many independent cells: renders
    :func:`netlists.programming_batch.render_batch_deck` (split into decks of at most
    ``max_cells_per_deck`` cells; a transient's cost grows faster than linearly beyond ~100
    cells), solves it and returns each cell's state and read conductance before and after.

:func:`write_verify`
    The paper's write-and-verify procedure (Wu et al., Adv. Mater. 2023) as a per-cell state
    machine in Python. Every *step* is one short ngspice transient (one pulse, then a verify
    read) of all cells still being programmed, each with its own pulse; a cell starts each
    step from the state the previous step left (the state capacitor's ``IC``). A finished
    cell leaves the deck. Device-to-device draws (``kd``, ``wd``) are fixed per cell for the
    whole procedure; the cycle-to-cycle multiplier ``kc`` is drawn afresh for every pulse.

The procedure, per cell (``lo = target - tolerance``, ``hi = target + tolerance``; "pulse"
means one write pulse of ``drive.t_write_s`` followed by a verify read at ``drive.v_read_v``
with the read gate ``array.v_gate_read_v``):

0. *Verify read* of the starting state (no pulse).
1. *Reset to floor*: while the read is above ``floor_s`` (default: the bottom of the cell's
   read window plus one level spacing), RESET pulses at ``drive.v_reset_max_v`` (gate
   ``drive.v_gate_reset_v``), at most ``max_floor_pulses``.
2. *Rounds* (at most ``max_rounds``). A round starts with a verify decision: within
   ``[lo, hi]`` -> done, success.

   * *Adaptive SET* (if below ``lo``): amplitude ``a = drive.v_set_min_v``; repeat: SET pulse
     at ``a`` (gate ``drive.v_gate_set_v``), verify; if the read is in ``[lo, hi]`` -> done,
     success; if above ``hi`` (overshoot) -> adaptive RESET of this round; else
     ``a = min(a + set_step_v, drive.v_set_max_v)``. After ``max_pulses_per_phase`` pulses
     without reaching ``lo`` the round ends.
   * *Adaptive RESET* (after an overshoot, or at once if the round starts above ``hi``):
     ``a = drive.v_reset_min_v``; repeat: RESET pulse at ``a`` (gate ``drive.v_gate_reset_v``),
     verify; in ``[lo, hi]`` -> done, success; below ``lo`` (undershoot) -> the round ends;
     else ``a = min(a + reset_step_v, drive.v_reset_max_v)``; at most
     ``max_pulses_per_phase`` pulses, then the round ends.

   When a round ends without success and ``max_rounds`` rounds have been used, the cell is
   done without success; its reached conductance is its last verify read.

The default tolerance is half a level spacing of ``n_levels`` (128) levels spread evenly
over the cell's read window ``[g(n_min), g(n_max)]`` (1T1R read conductances of the nominal
device solved in ngspice). Targets outside the window are rejected.

Seeds: cell ``k`` gets its own generator (``numpy.random.default_rng(seed_k)``) that draws,
in this order, ``kd``, ``wd`` and then one ``kc`` per pulse the cell receives: the same
order as :func:`circuitsim.device.draw_variation`, so replaying a cell's pulse history
through :func:`circuitsim.device.simulate_schedule` with ``seed=seed_k`` reproduces it. A
cell's outcome does not depend on which other cells share its decks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from circuitsim.interfaces import SpiceRunner
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError
from netlists.programming_batch import BatchCell, render_batch_deck

__all__ = ["BatchResult", "run_batch", "read_window", "cell_seeds", "WriteVerifyResult",
           "write_verify", "DEFAULT_LEVELS", "MAX_CELLS_PER_DECK", "whole_number", "step_value"]

#: Level grid that defines the default tolerance (the paper's 128 programmable levels).
DEFAULT_LEVELS = 128
#: Cells per transient: beyond ~100 a transient's cost per cell grows (measured on ngspice 46:
#: 7 ms per cell at 20-100 cells, 15 ms at 400).
MAX_CELLS_PER_DECK = 128


@dataclass(frozen=True)
class BatchResult:
    """Per-cell outcome of one pulse (or none) and a read; arrays in cell order."""

    state_before: np.ndarray  # N at the read before the pulse (n0 without that read), 1e26 m^-3
    state_after: np.ndarray  # N at the read after the pulse, 1e26 m^-3
    state_end: np.ndarray  # N at the end of the transient (the next step's IC), 1e26 m^-3
    g_before: np.ndarray  # read conductance before the pulse (NaN without that read), S
    g_after: np.ndarray  # read conductance after the pulse, S
    seconds: float  # ngspice wall time, all decks
    runs: int  # ngspice transients solved


def _vector(result, key: str, name: str) -> np.ndarray:
    try:
        values = np.asarray(result[key], dtype=float)
    except KeyError as err:
        raise SimulatorError(f"ngspice returned no vector {key!r}", netlist=name) from err
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise SimulatorError(f"vector {key!r} is empty or not finite", netlist=name)
    return values


def run_batch(hw: HardwareConfig, cells: Sequence[BatchCell], *, width_s: float,
              runner: SpiceRunner, read_before: bool = True, solver: SolverConfig | None = None,
              name: str = "pulse_batch",
              max_cells_per_deck: int = MAX_CELLS_PER_DECK) -> BatchResult:
    """Solve ``cells`` (see :class:`~netlists.programming_batch.BatchCell`) in ngspice."""
    cells = list(cells)
    if not cells:
        raise ConfigError("run_batch needs at least one cell")
    if isinstance(max_cells_per_deck, bool) or not isinstance(max_cells_per_deck, int) \
            or max_cells_per_deck < 1:
        raise ConfigError(f"max_cells_per_deck = {max_cells_per_deck!r} must be a whole "
                          "number >= 1")
    v_read = hw.drive.v_read_v
    out = {key: np.empty(len(cells)) for key in
           ("state_before", "state_after", "state_end", "g_before", "g_after")}
    seconds, runs = 0.0, 0
    for start in range(0, len(cells), max_cells_per_deck):
        chunk = cells[start:start + max_cells_per_deck]
        deck = render_batch_deck(hw, chunk, width_s=width_s, read_before=read_before,
                                 solver=solver, name=name)
        result = runner.run(deck.text, name=name)
        seconds += float(getattr(result, "seconds", 0.0))
        runs += 1
        t = _vector(result, "time", name)
        if t[-1] < deck.t_stop_s * (1 - 1e-9):
            raise SimulatorError(f"the transient stopped at {t[-1]!r} s before its end "
                                 f"{deck.t_stop_s!r} s", netlist=name)
        for k in range(len(chunk)):
            x = _vector(result, f"v(xd{k}.x)", name)
            i = _vector(result, f"i(vi{k})", name)
            s_read = np.interp(deck.read_times_s, t, x)
            g_read = np.interp(deck.read_times_s, t, i) / v_read
            idx = start + k
            out["state_after"][idx] = s_read[-1]
            out["g_after"][idx] = g_read[-1]
            out["state_end"][idx] = x[-1]
            if read_before:
                out["state_before"][idx] = s_read[0]
                out["g_before"][idx] = g_read[0]
            else:
                out["state_before"][idx] = chunk[k].n0
                out["g_before"][idx] = np.nan
    return BatchResult(seconds=seconds, runs=runs, **out)


def read_window(hw: HardwareConfig, *, runner: SpiceRunner) -> tuple[float, float]:
    """The nominal cell's read window ``(g(n_min), g(n_max))`` in S (1T1R, ngspice ``.op``)."""
    from circuitsim.tile import measure_cell_conductance

    g = measure_cell_conductance(hw, np.array([hw.device.n_min, hw.device.n_max]),
                                 runner=runner, name="wv_window")
    if not g[1] > g[0] > 0:
        raise SimulatorError(f"the cell's read window [{g[0]!r}, {g[1]!r}] S is not "
                             "increasing", netlist="wv_window")
    return float(g[0]), float(g[1])


def cell_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent per-cell seeds derived from one ``seed`` (deterministic)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r} must be a whole number >= 0")
    states = np.random.SeedSequence(int(seed)).generate_state(max(count, 1), dtype=np.uint32)
    return [int(s) for s in states[:count]]


@dataclass(frozen=True)
class WriteVerifyResult:
    """Outcome per cell (arrays in target order) and the settings that produced it."""

    targets_s: np.ndarray  # target read conductance, S
    g_reached: np.ndarray  # last verify read, S
    state_reached: np.ndarray  # state N at the end, 1e26 m^-3
    pulses: np.ndarray  # all write pulses applied (floor + SET + RESET)
    set_pulses: np.ndarray
    reset_pulses: np.ndarray  # adaptive RESET pulses (not the floor phase's)
    floor_pulses: np.ndarray  # RESET pulses of the reset-to-floor phase
    rounds: np.ndarray  # rounds started (0: within tolerance after the floor phase)
    success: np.ndarray  # final read within [target - tolerance, target + tolerance]
    kd: np.ndarray
    wd: np.ndarray
    seeds: tuple[int, ...]
    tolerance_s: float
    window_s: tuple[float, float]
    floor_s: float
    steps: int  # controller steps (each one ngspice transient per deck of cells)
    spice_runs: int
    spice_seconds: float
    wall_seconds: float
    #: per cell, the pulses applied: (kind, amplitude V) in order
    history: tuple[tuple[tuple[str, float], ...], ...] = field(repr=False, default=())


_FLOOR, _SET, _RESET, _DONE = 0, 1, 2, 3


def whole_number(label: str, value: object, lo: int = 1) -> int:
    """``value`` as an int; ConfigError naming ``label`` unless it is a whole number >= ``lo``
    (the procedure's caps, also checked by ``surrogate.program_model``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{label} = {value!r} must be a whole number >= {lo}")
    return int(value)


def step_value(label: str, value: object, hi: float) -> float:
    """``value`` as a float; ConfigError naming ``label`` unless it lies in (0, ``hi``]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(value) or not 0.0 < value <= hi:
        raise ConfigError(f"{label} = {value!r} is out of range: allowed (0, {hi:g}]")
    return float(value)


def write_verify(hw: HardwareConfig, targets_s: Sequence[float], *, runner: SpiceRunner,
                 seed: int | Sequence[int], max_rounds: int = 2,
                 tolerance_s: float | None = None, n_levels: int = DEFAULT_LEVELS,
                 set_step_v: float = 0.05, reset_step_v: float = 0.1,
                 max_pulses_per_phase: int = 60, max_floor_pulses: int = 20,
                 floor_s: float | None = None, start_states: Sequence[float] | None = None,
                 window_s: tuple[float, float] | None = None,
                 solver: SolverConfig | None = None,
                 max_cells_per_deck: int = MAX_CELLS_PER_DECK) -> WriteVerifyResult:
    """Program one cell per entry of ``targets_s`` (S) by write-and-verify, all in parallel.

    The procedure is in the module docstring. ``seed`` is one seed (per-cell seeds derived
    by :func:`cell_seeds`) or one seed per cell. Cells start at their own floor (``n_min x
    wd``, the state a full RESET leaves) unless ``start_states`` (1e26 m^-3, clipped into each
    cell's window) is given. ``tolerance_s`` defaults to half a level spacing of ``n_levels``
    levels over the read window; ``window_s`` (S) is measured in ngspice when not given.
    """
    t_wall = time.monotonic()
    targets = np.asarray(targets_s, dtype=float).ravel()
    n_cells = targets.size
    if n_cells == 0:
        raise ConfigError("targets_s is empty")
    if not np.all(np.isfinite(targets)):
        raise ConfigError("targets_s must be finite")
    max_rounds = whole_number("max_rounds", max_rounds)
    n_levels = whole_number("n_levels", n_levels, 2)
    max_phase = whole_number("max_pulses_per_phase", max_pulses_per_phase)
    max_floor = whole_number("max_floor_pulses", max_floor_pulses, 0)
    set_step = step_value("set_step_v", set_step_v, 5.0)
    reset_step = step_value("reset_step_v", reset_step_v, 5.0)
    drv, dev = hw.drive, hw.device

    if window_s is None:
        window = read_window(hw, runner=runner)
    else:
        window = (float(window_s[0]), float(window_s[1]))
        if not (math.isfinite(window[0]) and math.isfinite(window[1])
                and 0 < window[0] < window[1]):
            raise ConfigError(f"window_s = {window_s!r} must be two increasing positive "
                              "conductances, S")
    spacing = (window[1] - window[0]) / (n_levels - 1)
    tol = 0.5 * spacing if tolerance_s is None else step_value(
        "tolerance_s", tolerance_s, window[1] - window[0])
    floor = window[0] + spacing if floor_s is None else float(floor_s)
    if not math.isfinite(floor) or floor < window[0]:
        raise ConfigError(f"floor_s = {floor_s!r} must be a conductance at or above the bottom "
                          f"of the read window, {window[0]!r} S")
    outside = (targets < window[0] * (1 - 1e-9)) | (targets > window[1] * (1 + 1e-9))
    if np.any(outside):
        bad = targets[outside][0]
        raise ConfigError(
            f"target {bad * 1e6:.6g} uS is outside the cell's read window "
            f"[{window[0] * 1e6:.6g}, {window[1] * 1e6:.6g}] uS (1T1R read at "
            f"{drv.v_read_v:g} V of the nominal device between device.n_min and n_max)")

    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seeds = cell_seeds(int(seed), n_cells)
    else:
        seeds = [whole_number("seed", s, 0) for s in seed]  # type: ignore[union-attr]
        if len(seeds) != n_cells:
            raise ConfigError(f"{len(seeds)} seeds given for {n_cells} targets: give one "
                              "seed, or one per target")
    rngs = [np.random.default_rng(s) for s in seeds]
    kd = np.array([math.exp(dev.d2d_rate_sigma * r.standard_normal()) for r in rngs])
    wd = np.array([math.exp(dev.d2d_window_sigma * r.standard_normal()) for r in rngs])
    if start_states is None:
        n = dev.n_min * wd
    else:
        n = np.asarray(start_states, dtype=float).ravel()
        if n.shape != (n_cells,) or not np.all(np.isfinite(n)):
            raise ConfigError(f"start_states must hold {n_cells} finite states")
        n = np.clip(n, dev.n_min * wd, dev.n_max * wd)

    lo, hi = targets - tol, targets + tol
    phase = np.full(n_cells, _DONE)
    amp = np.zeros(n_cells)
    rounds = np.zeros(n_cells, dtype=int)
    phase_pulses = np.zeros(n_cells, dtype=int)
    counts = {k: np.zeros(n_cells, dtype=int) for k in ("set", "reset", "floor")}
    history: list[list[tuple[str, float]]] = [[] for _ in range(n_cells)]
    spice = {"runs": 0, "seconds": 0.0}
    steps = 0
    width = drv.t_write_s

    def step(active: np.ndarray, kinds: list[str | None], amps: np.ndarray) -> np.ndarray:
        """One pulse (or none) + verify read for ``active`` cells; returns their reads."""
        cells = []
        for j, k in enumerate(active):
            kind = kinds[j]
            kc = 1.0
            if kind is not None:
                kc = math.exp(dev.c2c_sigma * rngs[k].standard_normal())
                history[k].append((kind, float(amps[j])))
            top = dev.n_max * wd[k]
            bottom = dev.n_min * wd[k]
            cells.append(BatchCell(n0=float(min(max(n[k], bottom), top)), kind=kind,
                                   amplitude_v=float(amps[j]), kc=kc, kd=float(kd[k]),
                                   wd=float(wd[k])))
        res = run_batch(hw, cells, width_s=width, runner=runner, read_before=False,
                        solver=solver, name="write_verify",
                        max_cells_per_deck=max_cells_per_deck)
        spice["runs"] += res.runs
        spice["seconds"] += res.seconds
        n[active] = res.state_end
        return res.g_after

    def start_round(k: int) -> None:
        if lo[k] <= g[k] <= hi[k]:
            phase[k] = _DONE
        elif rounds[k] >= max_rounds:
            phase[k] = _DONE
        else:
            rounds[k] += 1
            phase_pulses[k] = 0
            if g[k] < lo[k]:
                phase[k], amp[k] = _SET, drv.v_set_min_v
            else:
                phase[k], amp[k] = _RESET, drv.v_reset_min_v

    # 0. verify read of the starting states
    everyone = np.arange(n_cells)
    g = step(everyone, [None] * n_cells, np.zeros(n_cells))
    steps += 1
    for k in range(n_cells):
        if g[k] > floor and max_floor > 0:
            phase[k] = _FLOOR
        else:
            start_round(k)

    while True:
        active = np.flatnonzero(phase != _DONE)
        if active.size == 0:
            break
        kinds: list[str | None] = []
        amps = np.empty(active.size)
        for j, k in enumerate(active):
            if phase[k] == _FLOOR:
                kinds.append("reset")
                amps[j] = drv.v_reset_max_v
            elif phase[k] == _SET:
                kinds.append("set")
                amps[j] = amp[k]
            else:
                kinds.append("reset")
                amps[j] = amp[k]
        g[active] = step(active, kinds, amps)
        steps += 1
        for k in active:
            if phase[k] == _FLOOR:
                counts["floor"][k] += 1
                if g[k] <= floor or counts["floor"][k] >= max_floor:
                    start_round(k)
                continue
            phase_pulses[k] += 1
            if phase[k] == _SET:
                counts["set"][k] += 1
                if g[k] >= lo[k]:
                    if g[k] <= hi[k]:
                        phase[k] = _DONE
                    else:  # overshoot: adaptive RESET in the same round
                        phase[k], amp[k], phase_pulses[k] = _RESET, drv.v_reset_min_v, 0
                elif phase_pulses[k] >= max_phase:
                    start_round(k)
                else:
                    amp[k] = min(amp[k] + set_step, drv.v_set_max_v)
            else:
                counts["reset"][k] += 1
                if g[k] <= hi[k]:
                    # within tolerance: done; undershoot: the round ends
                    start_round(k)
                elif phase_pulses[k] >= max_phase:
                    start_round(k)
                else:
                    amp[k] = min(amp[k] + reset_step, drv.v_reset_max_v)

    success = (g >= lo) & (g <= hi)
    total = counts["set"] + counts["reset"] + counts["floor"]
    return WriteVerifyResult(
        targets_s=targets, g_reached=g.copy(), state_reached=n.copy(), pulses=total,
        set_pulses=counts["set"], reset_pulses=counts["reset"], floor_pulses=counts["floor"],
        rounds=rounds, success=success, kd=kd, wd=wd, seeds=tuple(seeds), tolerance_s=tol,
        window_s=window, floor_s=floor, steps=steps, spice_runs=spice["runs"],
        spice_seconds=spice["seconds"], wall_seconds=time.monotonic() - t_wall,
        history=tuple(tuple(h) for h in history))
