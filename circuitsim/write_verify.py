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

The procedure itself (which pulse next, when a cell is done) is
:class:`circuitsim.write_policy.WritePolicy`'s, built from ``hw`` unless given; this module
applies its pulses (``drive.t_write_s`` long, each followed by a verify read at
``drive.v_read_v`` with the read gate ``array.v_gate_read_v``) in ngspice. Targets outside
the cell's read window ``[g(n_min), g(n_max)]`` (1T1R read conductances of the nominal device
solved in ngspice) are rejected.

Seeds: cell ``k`` gets its own generator (``numpy.random.default_rng(seed_k)``) from which
the device model draws ``kd``, ``wd`` and then one ``kc`` per pulse the cell receives
(``draw_device``, ``draw_cycle``): the draws of :func:`circuitsim.device.draw_variation`,
so replaying a cell's pulse history through :func:`circuitsim.device.simulate_schedule`
with ``seed=seed_k`` reproduces them exactly. A cell's outcome does not depend on which
other cells share its decks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from circuitsim.interfaces import SpiceRunner
from circuitsim.write_policy import Outcome, Phase, WritePolicy
from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError, SimulatorError
from netlists.programming_batch import BatchCell, render_batch_deck

__all__ = ["BatchResult", "run_batch", "read_window", "cell_seeds", "WriteVerifyResult",
           "write_verify", "MAX_CELLS_PER_DECK"]

#: Cells per transient. A transient's cost per cell rises with its cells up to about a
#: hundred and stays flat beyond (``benchmarks/bench_spice.py --batch-cells``, figures in
#: ``benchmarks/README.md``); a deck of this size keeps a retried solve small.
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


def _seed(value: object) -> int:
    """``value`` as an int; ConfigError unless it is a whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"seed = {value!r} must be a whole number >= 0")
    return int(value)


def cell_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent per-cell seeds derived from one ``seed`` (deterministic)."""
    states = np.random.SeedSequence(_seed(seed)).generate_state(max(count, 1), dtype=np.uint32)
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
    #: per cell, the pulses applied: (kind, amplitude V) in order
    history: tuple[tuple[tuple[str, float], ...], ...] = field(repr=False, default=())


def write_verify(hw: HardwareConfig, targets_s: Sequence[float], *, runner: SpiceRunner,
                 seed: int | Sequence[int], policy: WritePolicy | None = None,
                 start_states: Sequence[float] | None = None,
                 window_s: tuple[float, float] | None = None,
                 solver: SolverConfig | None = None,
                 max_cells_per_deck: int = MAX_CELLS_PER_DECK) -> WriteVerifyResult:
    """Program one cell per entry of ``targets_s`` (S) by write-and-verify, all in parallel.

    ``policy`` (default ``WritePolicy.of(hw)``) decides the pulses and when a cell is done;
    its tolerance and floor follow from the levels over the read window ``window_s`` (S),
    measured in ngspice when not given. ``seed`` is one seed (per-cell seeds derived by
    :func:`cell_seeds`) or one seed per cell. Cells start at their own floor (the lower
    state bound, which a full RESET leaves) unless ``start_states`` (1e26 m^-3, clipped into
    each cell's window) is given.
    """
    targets = np.asarray(targets_s, dtype=float).ravel()
    n_cells = targets.size
    if n_cells == 0:
        raise ConfigError("targets_s is empty")
    if not np.all(np.isfinite(targets)):
        raise ConfigError("targets_s must be finite")
    policy = WritePolicy.of(hw) if policy is None else policy
    if not isinstance(policy, WritePolicy):
        raise ConfigError(f"policy = {policy!r} must be a WritePolicy")
    drv = hw.drive
    model = device_model(hw)

    if window_s is None:
        window = read_window(hw, runner=runner)
    else:
        window = (float(window_s[0]), float(window_s[1]))
        if not (math.isfinite(window[0]) and math.isfinite(window[1])
                and 0 < window[0] < window[1]):
            raise ConfigError(f"window_s = {window_s!r} must be two increasing positive "
                              "conductances, S")
    tol, floor = policy.thresholds(window)
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
        seeds = [_seed(s) for s in seed]  # type: ignore[union-attr]
        if len(seeds) != n_cells:
            raise ConfigError(f"{len(seeds)} seeds given for {n_cells} targets: give one "
                              "seed, or one per target")
    rngs = [np.random.default_rng(s) for s in seeds]
    kd, wd = np.array([model.draw_device(r) for r in rngs]).T.copy()
    bottom, top = (np.asarray(b, dtype=float) for b in model.window(wd))
    if start_states is None:
        n = bottom.copy()
    else:
        n = np.asarray(start_states, dtype=float).ravel()
        if n.shape != (n_cells,) or not np.all(np.isfinite(n)):
            raise ConfigError(f"start_states must hold {n_cells} finite states")
        n = np.clip(n, bottom, top)

    lo, hi = targets - tol, targets + tol
    code = np.full(n_cells, policy.start)
    rounds = np.zeros(n_cells, dtype=int)
    counts = {phase: np.zeros(n_cells, dtype=int)
              for phase in (Phase.SET, Phase.RESET, Phase.FLOOR)}
    history: list[list[tuple[str, float]]] = [[] for _ in range(n_cells)]
    spice = {"runs": 0, "seconds": 0.0}
    g = np.full(n_cells, np.nan)
    steps = 0
    while True:
        active = np.flatnonzero(code != policy.done)
        if active.size == 0:
            break
        # one pulse (or, at START, none) and a verify read for every cell still going
        pulses = [policy.pulse(int(code[k])) for k in active]
        cells = []
        for k, pulse in zip(active, pulses):
            kc = 1.0
            if pulse is not None:
                kc = float(model.draw_cycle(rngs[k], 1)[0])
                history[k].append((pulse.kind, pulse.amplitude_v))
            cells.append(BatchCell(n0=float(min(max(n[k], bottom[k]), top[k])),
                                   kind=None if pulse is None else pulse.kind,
                                   amplitude_v=0.0 if pulse is None else pulse.amplitude_v,
                                   kc=kc, kd=float(kd[k]), wd=float(wd[k])))
        res = run_batch(hw, cells, width_s=drv.t_write_s, runner=runner, read_before=False,
                        solver=solver, name="write_verify",
                        max_cells_per_deck=max_cells_per_deck)
        spice["runs"] += res.runs
        spice["seconds"] += res.seconds
        n[active] = res.state_end
        g[active] = res.g_after
        steps += 1
        for k, pulse in zip(active, pulses):
            if pulse is not None:
                counts[pulse.phase][k] += 1
            move = policy.next(int(code[k]), Outcome.of(g[k], lo[k], hi[k], floor))
            code[k] = move.code
            rounds[k] += move.new_round

    success = (g >= lo) & (g <= hi)
    sets, resets, floors = (counts[p] for p in (Phase.SET, Phase.RESET, Phase.FLOOR))
    return WriteVerifyResult(
        targets_s=targets, g_reached=g.copy(), state_reached=n.copy(),
        pulses=sets + resets + floors, set_pulses=sets, reset_pulses=resets,
        floor_pulses=floors, rounds=rounds, success=success, kd=kd, wd=wd,
        seeds=tuple(seeds), tolerance_s=tol, window_s=window, floor_s=floor, steps=steps,
        spice_runs=spice["runs"], spice_seconds=spice["seconds"],
        history=tuple(tuple(h) for h in history))
