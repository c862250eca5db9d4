"""The ``batch`` backend: one ``ngspice -b`` process per solve.

``ngspice -b -r out.raw deck.cir`` with the deck and the raw file in a temporary directory;
ngspice runs in the caller's directory, as the shared backend's worker does, so relative
``.include`` paths behave alike. The deck carries a ``.control`` block for this backend
(:meth:`circuitsim.deck._Deck.render`: one BSIM thread, ASCII raw output), the raw file is
read by :mod:`circuitsim.rawfile`, and the output is cleaned into a log
(:func:`circuitsim.verdict._clean_log`). On Linux ngspice gets the parent-death signal
(``_lifeline.py``): it is killed when the runner's process dies. Nothing is kept between
solves: a loaded circuit's re-solve rewrites its altered source lines
(:func:`circuitsim.deck._rewrite_sources`) and runs the whole deck.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from circuitsim._lifeline import parent_death_preexec
from circuitsim.backends.base import Backend
from circuitsim.deck import _Deck, _rewrite_sources
from circuitsim.discovery import MIN_VERSION, _executable_facts, _judge_found, _not_found
from circuitsim.rawfile import read_raw
from circuitsim.verdict import _canonical, _clean_log, _ordered, _Outcome
from netlists.errors import SimulationTimeout, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import ConvergenceAid, LoadedCircuit

__all__ = ["BatchBackend"]


class BatchBackend(Backend):
    """``ngspice -b``, one process per solve; see the module docstring."""

    def solve(self, deck: _Deck, aids: Sequence[ConvergenceAid], name: str, left: float,
              limit: float) -> _Outcome:
        text = deck.render(aids, batch=True)
        executable = self._executable()
        with tempfile.TemporaryDirectory(prefix="circuitsim-ngspice-") as folder:
            deck_path, raw = Path(folder, "deck.cir"), Path(folder, "out.raw")
            deck_path.write_text(text)
            start = time.monotonic()
            # Run in the caller's directory, like the shared worker, so that relative
            # .include/.lib paths resolve the same way on both backends.
            # ngspice dies with this process (this thread waits for it below).
            proc = subprocess.Popen(
                [executable, "-b", "-r", str(raw), str(deck_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                preexec_fn=parent_death_preexec())
            try:
                output, _ = proc.communicate(timeout=max(left, 0.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                raise SimulationTimeout(
                    f"the solve did not finish within {limit:g} s; ngspice was killed",
                    netlist=name, log=_clean_log(output)) from None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            seconds = time.monotonic() - start
            log = _clean_log(output)
            if proc.returncode != 0 or not raw.exists():
                return _Outcome(None, log, seconds, exit_status=proc.returncode)
            try:
                plots = read_raw(raw)
            except SimulatorError as err:
                return _Outcome(None, log, seconds, proc.returncode, problem=str(err))
        if len(plots) != 1:
            return _Outcome(None, log, seconds, proc.returncode,
                            problem=f"the raw file holds {len(plots)} plots instead of 1")
        try:
            vectors = _ordered((_canonical(vname), values)
                               for vname, values in plots[0].vectors().items())
        except SimulatorError as err:
            return _Outcome(None, log, seconds, proc.returncode, problem=str(err))
        return _Outcome(vectors, log, seconds, proc.returncode)

    def solve_loaded(self, circuit: LoadedCircuit, aids: Sequence[ConvergenceAid],
                     left: float, limit: float) -> _Outcome:
        """The deck with the altered source lines rewritten, solved as a whole."""
        deck = _rewrite_sources(circuit._deck, circuit._sources, circuit._state, circuit.name)
        return self.solve(deck, aids, circuit.name, left, limit)

    def _executable(self) -> str:
        facts = _executable_facts()
        problem = _judge_found(facts, "program", MIN_VERSION)
        if problem or facts.path is None:
            raise _not_found([problem or "ngspice not found"], MIN_VERSION)
        return facts.path
