"""The interface of a :class:`~circuitsim.runner.Runner` backend: :class:`Backend`.

The runner owns the contract of :mod:`circuitsim.runner`: it checks decks
(:mod:`circuitsim.deck`), keeps loaded circuits and their alterations, retries with
convergence aids, and judges every outcome (:mod:`circuitsim.verdict`). A backend only
solves: given a checked deck and the convergence aids of one attempt, it runs ngspice once,
within the seconds left, and returns what came out as an :class:`~circuitsim.verdict._Outcome`,
good or bad. It raises only where there is no outcome to judge: ``SimulationTimeout`` (the
time ran out; the ngspice it ran was killed), ``SimulatorNotFoundError``, ``SimulatorError``
(ngspice died or could not load a deck), ``NetlistError`` (a deck it cannot handle).

A runner makes its backend once, from ``SolverConfig.backend``
(:data:`circuitsim.backends.BACKENDS`), and calls it with the runner's lock held: a backend
needs no locking of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

from circuitsim.deck import _Deck
from circuitsim.verdict import _Outcome
from netlists.config import SolverConfig

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import ConvergenceAid, LoadedCircuit

__all__ = ["Backend"]


class Backend(ABC):
    """Runs ngspice for one runner. One subclass per ``SolverConfig.backend``, one module each.

    ``left`` is the time this attempt may take, in seconds; ``limit`` is the whole call's
    limit, named in a timeout's message. The lifecycle hooks ``load``, ``release`` and
    ``close`` do nothing unless a backend keeps something running between solves.
    """

    def __init__(self, solver: SolverConfig) -> None:
        self.solver = solver

    @abstractmethod
    def solve(self, deck: _Deck, aids: Sequence[ConvergenceAid], name: str, left: float,
              limit: float) -> _Outcome:
        """Solve ``deck`` once with the cards of ``aids`` (:meth:`Runner.run`)."""

    @abstractmethod
    def solve_loaded(self, circuit: LoadedCircuit, aids: Sequence[ConvergenceAid],
                     left: float, limit: float) -> _Outcome:
        """Solve ``circuit``'s deck once with all its alterations and the cards of ``aids``
        (:meth:`LoadedCircuit.run`)."""

    def load(self, circuit: LoadedCircuit, limit: float) -> None:
        """Get ready to re-solve ``circuit``, within ``limit`` seconds (:meth:`Runner.load`)."""

    def release(self, circuit: LoadedCircuit) -> None:
        """Forget ``circuit`` (:meth:`LoadedCircuit.close`)."""

    def close(self) -> None:
        """Stop what runs between solves (:meth:`Runner.close`); a later solve starts anew."""
