"""Run ngspice on netlist text and return its vectors as numpy arrays.

One interface, two backends (:class:`~netlists.config.SolverConfig` ``backend``; one class
each in :mod:`circuitsim.backends`, chosen once when the runner is made):

``shared`` (default)
    libngspice, loaded through PySpice's ``NgSpiceShared`` inside a worker *process*
    (``circuitsim/_worker.py``, started as a fresh interpreter, never forked from the caller).
    The worker is reused across solves (no per-solve process start), recycled after
    ``recycle_after`` solves (libngspice grows in memory over many loads), and killed and
    restarted when a solve runs past its time limit or ngspice declares itself unusable.
    The worker ends when the runner's process ends (``_lifeline.py``), even if that process
    is killed with ``kill -9``.
``batch``
    ``ngspice -b -r out.raw deck.cir``, one process per solve, with the deck and the raw
    file in a temporary directory (ngspice runs in the caller's directory, as the shared
    worker does, so relative ``.include`` paths behave alike); the ASCII raw file is read by
    :mod:`circuitsim.rawfile`. On Linux, ngspice gets the parent-death signal: it is killed
    when the runner's process dies.

Both backends receive the same deck and return the same vector names:

* lower case; node voltages ``v(node)`` (``v(out)``, ``v(x1.n3)``); branch currents of
  voltage sources and inductors ``i(name)`` (``i(v1)``, ``i(v.x1.vs)``); device
  quantities saved with ``.save @m1[id]`` keep their ``@`` name;
* the scale first: ``time`` for ``.tran``, the sweep as ngspice names it for ``.dc``
  (``v-sweep``, ``i-sweep``, ...); then the rest in sorted order;
* ``.op`` values are length-1 arrays.

What the runner adds to the deck (before ``.end``)
--------------------------------------------------
* ``.options klu`` unless the deck already names KLU: ngspice 46 still defaults to Sparse
  1.3, which falls further behind as the crossbar grows (``benchmarks/bench_spice.py
  --solver-sizes``, figures in ``benchmarks/README.md``).
* BSIM3/4 OpenMP off (``set num_threads=1``): ngspice's ``spinit`` sets 8 threads, which are
  erratic and slow on a busy 2-core machine. The shared backend issues the command before
  every load; the batch backend adds a ``.control`` block with it (a ``.control`` block in
  ``-b`` mode runs *before* the automatic analysis and the ``-r`` output). A
  ``.options num_threads=1`` line does not work: spinit's global variable wins over it.
* batch only: ``set filetype=ascii`` in the same block (ASCII raw output).

How success is judged
---------------------
Not by PySpice's error flag nor by the word "error" in the output (a successful solve can
print notes on stderr, and a title may contain "error"). A solve succeeded when all hold:
the analysis produced a plot whose vectors are non-empty, of equal length (length 1 for
``.op``) and finite; a ``.tran`` reached its ``tstop``; ngspice did not print
"simulation(s) aborted"; and (batch) ngspice exited with status 0. Otherwise:

* messages that mean the deck is malformed (unknown model or subcircuit, parse errors,
  undefined parameters, ...) -> :class:`NetlistError` with ngspice's lines, no retry;
* convergence trouble (timestep too small, singular matrix, gmin/source stepping failed,
  non-finite values, a transient that stopped early, ...) -> retried with the convergence
  aids below, then :class:`ConvergenceError`;
* anything else -> :class:`SimulatorError`. Partial or zero results are never returned.

Convergence aids
----------------
Attempt ``k + 1`` (``k = 1 .. SolverConfig.retries``) appends the ``.options`` lines of aids
``1..k`` (cumulative) before ``.end``; a later ``.options`` overrides the deck's own (checked
on ngspice 46 with the ``option`` listing). Retries beyond the number of aids are not used.
Each retry is logged at WARNING level and named in the result's log.

1. ``iterations``: ``.options itl1=1000 itl2=500 itl4=100``. Raises the Newton iteration
   limits of the operating point, of each DC-sweep point and of each time point (defaults
   100, 50, 10). The converged answer is unchanged.
2. ``gear-shunt``: ``.options method=gear maxord=2 rshunt=1e12 gmin=1e-10``. Gear-2
   integration instead of trapezoidal (no numerical ringing after sharp edges), a 1e12 ohm
   resistor from every node to ground (gives floating nodes a DC path; ngspice 46 otherwise
   "solves" them as inf) and a junction gmin of 1e-10 S instead of 1e-12 S. Adds ~1e-12 A
   per volt of leakage per node.
3. ``loose-tolerances``: ``.options reltol=2e-3 abstol=1e-10 vntol=1e-5``. Twice the default
   relative tolerance and looser absolute ones (default 1e-12 A, 1e-6 V); last resort.

Re-solving a loaded circuit
---------------------------
:meth:`Runner.load` checks a deck like :meth:`Runner.run` and keeps it parsed;
:meth:`LoadedCircuit.alter` changes independent sources (``V...``/``I...`` element lines of
the deck itself, outside subcircuits and ``.include`` files) and :meth:`LoadedCircuit.run`
re-runs the deck's analysis with every alteration made so far. Results, success judgement,
convergence-aid retries and timeouts are those of :meth:`Runner.run`; ``.op`` and ``.dc``
see a source's DC value, ``.tran`` its transient function if it has one, else its DC value
(ngspice's own rule). An alteration is either

* a number: the source's DC value (``alter src dc = ...``); a transient function stays, or
* a PWL point list ``[t0, v0, t1, v1, ...]`` (at least one point, times non-decreasing):
  replaces the source's transient function (``alter src pwl = ...``); the DC value stays.

``shared`` backend: the circuit stays loaded in the worker; each re-run applies the new
alterations with ngspice's ``alter`` and issues ``run`` (a fresh plot, freed after reading;
the parse and the circuit set-up are skipped). The values reach ngspice through a vector
written in binary, so they are bit-exact and a PWL may be of any length (ngspice silently
cuts a command line at 1024 characters, so ``alter @v1[pwl] = [ ... ]`` as text would
corrupt long lists). The runner keeps every alteration on its side: after a worker recycle
(``recycle_after``, where each re-run counts as a solve), a timeout kill, a crash, or a
retry that needs other convergence aids, the deck is reloaded and all alterations are
re-applied, transparently. A retry loads the deck with the aids' cards; the next
:meth:`LoadedCircuit.run` starts again without aids, as :meth:`Runner.run` would.

``batch`` backend: emulated. Each re-run rewrites the altered source lines of the deck
(``dc <value>`` and/or ``pwl(...)`` in place of the old DC value / transient function; other
parts such as ``ac`` stay) and runs the whole deck with ``ngspice -b``: same semantics,
no speed-up. Numbers are written with Python's shortest round-trip repr; ngspice's own
number parser may differ from them by one unit in the last place.

One runner keeps at most one loaded circuit: :meth:`Runner.load` of another deck, a plain
:meth:`Runner.run`, or :meth:`Runner.close` invalidates it (on both backends, so that code
behaves alike on either), and using it afterwards raises :class:`CircuitInvalidatedError`.

Where the parts live
--------------------
This module holds the interface: :class:`Runner` (the retry loop with convergence aids),
:class:`LoadedCircuit` (alterations, validity), :class:`SimResult`, the aids, and
re-exports :func:`check_ngspice` and :class:`NgspiceInfo`. The rest, one job a module:
:mod:`circuitsim.discovery` (finding and checking ngspice), :mod:`circuitsim.deck` (the
deck contract, the cards added, sources and their rewriting), :mod:`circuitsim.verdict`
(vector names, how success is judged) and :mod:`circuitsim.backends` (the
:class:`~circuitsim.backends.base.Backend` interface and one class per backend). Code that
takes a runner types it as :class:`circuitsim.interfaces.SpiceRunner`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from circuitsim.backends import BACKENDS, Backend
from circuitsim.deck import (
    _SOURCE_NAME,
    _alteration,
    _Deck,
    _deck_elements,
    _prepare,
    _SourceLine,
)
# Re-exported: callers import what the runner layer offers from this module.
from circuitsim.discovery import NgspiceInfo, check_ngspice
from circuitsim.verdict import _judge, _Outcome
from netlists.config import SolverConfig
from netlists.errors import (
    CircuitSimError,
    ConvergenceError,
    NetlistError,
    SimulationTimeout,
    SimulatorError,
)

__all__ = [
    "CONVERGENCE_AIDS",
    "CircuitInvalidatedError",
    "ConvergenceAid",
    "LoadedCircuit",
    "NgspiceInfo",
    "Runner",
    "SimResult",
    "check_ngspice",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SimResult:
    """The vectors of one successful solve.

    ``vectors`` maps normalized names (see the module docstring) to real float64 arrays;
    ``log`` is ngspice's output (all attempts, when convergence aids were needed);
    ``seconds`` is the wall time of the solve(s), excluding worker start-up; ``attempts`` is
    1 plus the number of convergence aids that were needed.
    """

    vectors: dict[str, np.ndarray]
    log: str
    seconds: float
    backend: str
    attempts: int

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.vectors[name]
        except KeyError:
            raise KeyError(f"no vector {name!r}; available: {sorted(self.vectors)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.vectors


@dataclass(frozen=True)
class ConvergenceAid:
    """One documented retry step: ``.options`` lines appended before ``.end``."""

    name: str
    cards: tuple[str, ...]
    effect: str


CONVERGENCE_AIDS: tuple[ConvergenceAid, ...] = (
    ConvergenceAid(
        "iterations", (".options itl1=1000 itl2=500 itl4=100",),
        "raises the DC, DC-sweep and per-timepoint Newton iteration limits "
        "(defaults 100/50/10); the converged answer is unchanged"),
    ConvergenceAid(
        "gear-shunt", (".options method=gear maxord=2 rshunt=1e12 gmin=1e-10",),
        "Gear-2 integration instead of trapezoidal (no numerical ringing), 1e12 ohm from every "
        "node to ground, junction gmin 1e-10 S; changes currents by ~1e-12 A per volt"),
    ConvergenceAid(
        "loose-tolerances", (".options reltol=2e-3 abstol=1e-10 vntol=1e-5",),
        "doubles the relative tolerance and loosens the absolute ones; last resort"),
)


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------

def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name = {name!r} must be a non-empty string")


class Runner:
    """Solve SPICE decks with ngspice; see the module docstring for the contract.

    One runner drives at most one ngspice at a time; calls from several threads are
    serialized. ``close()`` (or leaving a ``with`` block) stops the worker process; a later
    ``run()`` starts a new one. ``load()`` keeps one deck parsed for cheap re-solves with
    changed sources (:class:`LoadedCircuit`).
    """

    def __init__(self, solver: SolverConfig | None = None) -> None:
        if solver is None:
            solver = SolverConfig()
        if not isinstance(solver, SolverConfig):
            raise TypeError(f"solver must be a SolverConfig, got {type(solver).__name__}")
        self.solver = solver
        self._backend: Backend = BACKENDS[solver.backend](solver)
        self._lock = threading.Lock()
        self._loaded: LoadedCircuit | None = None

    @property
    def backend(self) -> str:
        return self.solver.backend

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process, if one is running; invalidates a loaded circuit."""
        with self._lock:
            self._invalidate_loaded("its runner was closed")
            self._backend.close()

    def _limit(self, timeout_s: float | None) -> float:
        limit = self.solver.timeout_s if timeout_s is None else timeout_s
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) \
                or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"timeout_s = {timeout_s!r} must be a positive number of seconds")
        return float(limit)

    def run(self, netlist: str, *, name: str, timeout_s: float | None = None) -> SimResult:
        """Solve ``netlist`` (a complete deck, see module docstring) and return its vectors.

        ``name`` identifies the netlist in errors. ``timeout_s`` (default
        ``solver.timeout_s``) bounds the total solve time of this call, convergence retries
        included. Raises NetlistError, ConvergenceError, SimulationTimeout,
        SimulatorNotFoundError or SimulatorError; never returns partial results.
        A circuit kept by :meth:`load` is dropped (its :class:`LoadedCircuit` becomes
        invalid).
        """
        _check_name(name)
        limit = self._limit(timeout_s)
        deck = _prepare(netlist, name)
        backend = self._backend

        def attempt(aids: Sequence[ConvergenceAid], left: float) -> _Outcome:
            return backend.solve(deck, aids, name, left, limit)

        with self._lock:
            self._invalidate_loaded("Runner.run() was called on its runner")
            return self._attempts(deck, name, limit, attempt)

    def load(self, netlist: str, *, name: str,
             timeout_s: float | None = None) -> "LoadedCircuit":
        """Check ``netlist`` like :meth:`run`, parse it, and keep it for re-solves.

        Returns a :class:`LoadedCircuit` whose ``alter()`` changes independent sources and
        whose ``run()`` re-runs the deck's analysis. The shared backend parses the deck now
        (ngspice's complaints raise :class:`NetlistError` here; ``timeout_s``, default
        ``solver.timeout_s``, bounds the parse); the batch backend only checks it. A circuit
        loaded earlier by this runner is dropped and its LoadedCircuit becomes invalid.
        """
        _check_name(name)
        limit = self._limit(timeout_s)
        deck = _prepare(netlist, name)
        sources, elements = _deck_elements(deck)
        with self._lock:
            self._invalidate_loaded(f"another circuit ({name!r}) was loaded")
            circuit = LoadedCircuit(self, deck, name, sources, elements)
            self._backend.load(circuit, limit)
            self._loaded = circuit
        return circuit

    def _attempts(self, deck: _Deck, name: str, limit: float,
                  attempt: Callable[[Sequence[ConvergenceAid], float], _Outcome]) -> SimResult:
        """The retry loop of :meth:`run`: ``attempt(aids, time_left)`` solves once."""
        n_aids = min(self.solver.retries, len(CONVERGENCE_AIDS))
        left = limit
        logs: list[str] = []
        total = 0.0
        failure = ""
        for index in range(n_aids + 1):
            aids = CONVERGENCE_AIDS[:index]
            if left <= 0:
                raise SimulationTimeout(
                    f"no time left for attempt {index + 1} within {limit:g} s",
                    netlist=name, log="\n".join(logs))
            outcome: _Outcome = attempt(aids, left)
            left -= outcome.seconds
            total += outcome.seconds
            if index:
                cards = " ".join(card for aid in aids for card in aid.cards)
                logs.append(f"* attempt {index + 1}, with convergence aid(s) "
                            f"{', '.join(aid.name for aid in aids)}: {cards}")
            logs.append(outcome.log)
            verdict, detail = _judge(outcome, deck)
            if verdict == "ok" and outcome.vectors is not None:
                if index:
                    logger.info("%s: converged with aid(s) %s", name,
                                ", ".join(aid.name for aid in aids))
                return SimResult(vectors=outcome.vectors, log="\n".join(logs),
                                 seconds=total, backend=self.backend, attempts=index + 1)
            if verdict == "netlist":
                raise NetlistError(
                    f"{name}: ngspice rejected the netlist:\n"
                    + "\n".join("  " + line for line in detail.splitlines()))
            if verdict == "other":
                raise SimulatorError(detail, netlist=name, log="\n".join(logs))
            failure = detail
            if index < n_aids:
                logger.warning("%s: no convergence (%s); retrying with convergence aid "
                               "'%s'", name, detail, CONVERGENCE_AIDS[index].name)
        tried = ", ".join(aid.name for aid in CONVERGENCE_AIDS[:n_aids]) or "none"
        raise ConvergenceError(
            f"did not converge after {n_aids + 1} attempt(s) (convergence aids tried: "
            f"{tried}): {failure}", netlist=name, log="\n".join(logs))

    # -- loaded circuits (callers hold self._lock) --------------------------------------

    def _invalidate_loaded(self, reason: str) -> None:
        """Make the current LoadedCircuit unusable (the worker drops it at its next load)."""
        if self._loaded is not None:
            self._loaded._invalid = reason
            self._loaded = None


# --------------------------------------------------------------------------------------
# Loaded circuits
# --------------------------------------------------------------------------------------

class CircuitInvalidatedError(CircuitSimError):
    """A :class:`LoadedCircuit` was used after it was closed or replaced.

    Its runner loaded another deck, ran a plain :meth:`Runner.run`, or was closed; load
    the deck again to go on.
    """


_SERIALS = itertools.count(1)


class LoadedCircuit:
    """A deck kept parsed by :meth:`Runner.load`, re-solved with changed sources.

    ``alter()`` records source changes (validated at once) and ``run()`` re-runs the deck's
    analysis with all alterations made so far; see "Re-solving a loaded circuit" in the
    module docstring for the semantics on each backend. A context manager: ``close()``
    (idempotent) removes the circuit from ngspice. The circuit becomes invalid when its
    runner loads another deck, runs a plain :meth:`Runner.run`, or is closed; any use then
    raises :class:`CircuitInvalidatedError`. Calls are serialized with the runner's.
    """

    def __init__(self, runner: Runner, deck: _Deck, name: str,
                 sources: Mapping[str, _SourceLine], elements: frozenset[str]) -> None:
        self.name = name
        self._runner = runner
        self._deck = deck
        self._sources = dict(sources)
        self._elements = elements
        self._serial = next(_SERIALS)
        self._invalid = ""  # why the circuit can no longer be used; empty while valid
        # Every alteration so far, keyed by (source, "dc" | "pwl"), and the version at
        # which each was last changed (the worker is told what changed since it last ran).
        self._state: dict[tuple[str, str], tuple[float, ...]] = {}
        self._changed: dict[tuple[str, str], int] = {}
        self._version = 0

    def __repr__(self) -> str:
        state = f"invalid: {self._invalid}" if self._invalid else "valid"
        return (f"<LoadedCircuit {self.name!r} ({self._runner.backend}, "
                f"{len(self._state)} alteration(s), {state})>")

    def __enter__(self) -> "LoadedCircuit":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sources(self) -> tuple[str, ...]:
        """Names (lower case) of the independent sources that ``alter()`` accepts."""
        return tuple(sorted(self._sources))

    @property
    def valid(self) -> bool:
        """False once the circuit was closed or replaced."""
        return not self._invalid

    @property
    def alterations(self) -> dict[str, float | tuple[float, ...]]:
        """The alterations so far: ``{source: DC value, source + "[pwl]": points}``."""
        return {source if kind == "dc" else f"{source}[pwl]": values[0] if kind == "dc"
                else values for (source, kind), values in self._state.items()}

    def _check_valid(self) -> None:
        if self._invalid:
            raise CircuitInvalidatedError(
                f"{self.name}: this loaded circuit can no longer be used because "
                f"{self._invalid}; load the deck again with Runner.load()")

    def close(self) -> None:
        """Remove the circuit from ngspice (shared backend) and invalidate it; idempotent."""
        runner = self._runner
        with runner._lock:
            if self._invalid:
                return
            self._invalid = "it was closed"
            if runner._loaded is self:
                runner._loaded = None
            runner._backend.release(self)

    def alter(self, changes: Mapping[str, float | Sequence[float]]) -> None:
        """Change independent sources for the next :meth:`run` (and all later ones).

        ``changes`` maps source names (case-insensitive, e.g. ``"vrow0"``) to a DC value (a
        number) or a PWL point list ``[t0, v0, t1, v1, ...]`` that replaces the source's
        transient function. All changes are checked before any is recorded: a name that is
        not an independent source of the deck raises :class:`NetlistError`; a non-finite
        value, a PWL list of odd length or shorter than 2, decreasing PWL times or a value
        of another type raise :class:`ConfigError`.
        """
        if not isinstance(changes, Mapping):
            raise TypeError(f"changes must be a mapping of source names to values, got "
                            f"{type(changes).__name__}")
        staged: dict[tuple[str, str], tuple[float, ...]] = {}
        for key, value in changes.items():
            if not isinstance(key, str):
                raise TypeError(f"source names must be strings, got {key!r}")
            source = key.strip().lower()
            if source not in self._sources:
                if source in self._elements:
                    raise NetlistError(
                        f"{self.name}: {key!r} is not an independent voltage or current "
                        "source (an element line starting with V or I); only those can be "
                        "altered")
                known = ", ".join(self.sources[:12]) or "none"
                more = f" and {len(self._sources) - 12} more" if len(self._sources) > 12 else ""
                raise NetlistError(
                    f"{self.name}: no source {key!r} in the netlist (sources inside "
                    f"subcircuits or .include files cannot be altered); its sources: "
                    f"{known}{more}")
            if not _SOURCE_NAME.fullmatch(source):
                raise NetlistError(f"{self.name}: the source name {key!r} has characters "
                                   "that ngspice's alter command cannot take")
            kind, values = _alteration(key, value)
            staged[(source, kind)] = values
        with self._runner._lock:
            self._check_valid()
            for key, values in staged.items():
                self._version += 1
                self._state[key] = values
                self._changed[key] = self._version

    def run(self, *, timeout_s: float | None = None) -> SimResult:
        """Re-run the deck's analysis with all alterations so far; as :meth:`Runner.run`.

        ``timeout_s`` (default ``solver.timeout_s``) bounds this call, convergence retries
        and any transparent reload included. Raises what :meth:`Runner.run` raises, and
        :class:`CircuitInvalidatedError` when the circuit was closed or replaced.
        """
        runner = self._runner
        limit = runner._limit(timeout_s)
        with runner._lock:
            self._check_valid()

            def attempt(aids: Sequence[ConvergenceAid], left: float) -> _Outcome:
                return runner._backend.solve_loaded(self, aids, left, limit)
            return runner._attempts(self._deck, self.name, limit, attempt)
