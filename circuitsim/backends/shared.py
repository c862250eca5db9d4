"""The ``shared`` backend: libngspice in a worker process that is reused across solves.

:class:`SharedBackend` keeps one :class:`_Worker`, the client of a worker process: a fresh
interpreter running ``circuitsim/_worker.py`` (never a fork of the caller) that loads
libngspice through PySpice and answers requests over a socket. The worker starts with the
first solve, is recycled after ``SolverConfig.recycle_after`` solves (libngspice grows in
memory over many loads), is killed when a solve runs past its time limit, and is replaced
when it dies or its ngspice declares itself unusable. It ends when the runner's process
ends, even after ``kill -9`` (``_lifeline.py``'s watchdog thread, in the worker).

A :class:`~circuitsim.runner.LoadedCircuit` stays loaded in the worker (``_Worker.held``
says which circuit, with how many convergence aids, at which alteration version); a
re-solve sends only the alterations made since, and the whole deck with every alteration
when the worker does not hold it (see "Re-solving a loaded circuit" in
:mod:`circuitsim.runner`).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Sequence

from circuitsim import discovery
from circuitsim.backends.base import Backend
from circuitsim.deck import _Deck
from circuitsim.discovery import MIN_VERSION, _Found, _judge_found, _not_found
from circuitsim.verdict import _canonical, _ordered, _Outcome, _rejection
from netlists.config import SolverConfig
from netlists.errors import (
    NetlistError,
    SimulationTimeout,
    SimulatorError,
    SimulatorNotFoundError,
)

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import ConvergenceAid, LoadedCircuit

__all__ = ["SharedBackend"]

# The runner's logger: one name to configure for everything a runner reports.
logger = logging.getLogger("circuitsim.runner")

_WORKER_PATH = str(Path(__file__).parents[1] / "_worker.py")
# Run _worker.py as a script in a fresh interpreter without the current directory on
# sys.path (a stray numpy.py there must not shadow numpy) and without importing circuitsim.
_BOOT = ("import sys; sys.path[:] = [p for p in sys.path if p]; sys.argv = sys.argv[1:]; "
         "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')")
_STARTUP_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 5.0


class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def _reap(proc: subprocess.Popen[bytes], conn: Connection, output: IO[bytes],
          kill: bool) -> None:
    """Stop a worker: ask it to exit (or kill it), then release its pipe and output file."""
    if kill:
        proc.kill()
    else:
        try:
            conn.send(("close",))
        except (OSError, ValueError):
            pass
    conn.close()
    try:
        proc.wait(timeout=_CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    output.close()


class _Worker:
    """One worker process hosting libngspice (see ``_worker.py``)."""

    def __init__(self, library: str, *, startup_timeout_s: float = _STARTUP_TIMEOUT_S) -> None:
        self.library = library
        self.solves = 0
        # What the worker keeps loaded for a LoadedCircuit: (serial, number of convergence
        # aids in the loaded text, alteration version applied), or None.
        self.held: tuple[int, int, int] | None = None
        parent, child = socket.socketpair()
        # The worker's own stdout/stderr (ngspice writes almost everything through the
        # callbacks) go to a private file: never into the caller's stdout, never a pipe
        # that could fill up; its tail explains a crash.
        self._output: IO[bytes] = tempfile.TemporaryFile(prefix="circuitsim-worker-")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER_PATH, str(child.fileno()), library,
                 str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=self._output, stderr=self._output,
                pass_fds=(child.fileno(),), close_fds=True)
        except OSError as err:
            parent.close()
            child.close()
            self._output.close()
            raise SimulatorError(f"cannot start the ngspice worker: {err}") from err
        child.close()
        self._conn = Connection(parent.detach())
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._conn, self._output,
                                           False)
        logger.debug("started ngspice worker pid %d for %s", self._proc.pid, library)
        try:
            kind, payload = self._receive(startup_timeout_s)
        except _WorkerTimeout:
            self.close(kill=True)
            raise SimulatorError(
                f"the ngspice worker did not start within {startup_timeout_s:g} s") from None
        except _WorkerDied as err:
            raise SimulatorNotFoundError(
                f"the ngspice worker could not load {library}: {err}", log=err.log) from None
        if kind != "ready":
            self.close(kill=True)
            raise SimulatorNotFoundError(f"cannot load libngspice from {library}: {payload}")
        self.info: dict[str, Any] = payload

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _output_tail(self, limit: int = 4000) -> str:
        try:
            self._output.seek(0, os.SEEK_END)
            size = self._output.tell()
            self._output.seek(max(0, size - limit))
            return self._output.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _receive(self, timeout: float) -> tuple[str, Any]:
        try:
            ready = self._conn.poll(max(timeout, 0.0))
        except (OSError, EOFError):
            ready = True  # the read below reports the death
        if not ready:
            raise _WorkerTimeout()
        try:
            message = self._conn.recv()
        except (EOFError, OSError) as err:
            tail = self._output_tail()
            self.close(kill=True)
            status = self._proc.returncode
            raise _WorkerDied(f"the worker exited unexpectedly (status {status}): {err}",
                              tail) from None
        if message[0] == "crash":
            log = f"{self._output_tail()}\n{message[1]}".strip()
            self.close(kill=True)
            raise _WorkerDied("the worker raised an exception", log)
        return message[0], message[1]

    def solve(self, text: str, timeout: float) -> dict[str, Any]:
        """Send one deck; return the worker's reply. Raises _WorkerTimeout / _WorkerDied."""
        return self.request(("run", text), timeout)

    def request(self, message: tuple[Any, ...], timeout: float) -> dict[str, Any]:
        """Send one request (see ``_worker.py``); return the worker's reply.

        ``run``, ``load`` and ``rerun`` count as solves (for ``recycle_after``). Every
        request clears ``held``; the caller sets it again after a successful load or rerun.
        Raises _WorkerTimeout / _WorkerDied.
        """
        if message[0] != "drop":
            self.solves += 1
        self.held = None
        try:
            self._conn.send(message)
        except (OSError, ValueError) as err:
            tail = self._output_tail()
            self.close(kill=True)
            raise _WorkerDied(f"cannot reach the worker: {err}", tail) from None
        _, reply = self._receive(timeout)
        return reply  # type: ignore[no-any-return]

    def close(self, *, kill: bool = False) -> None:
        """Stop the worker (gracefully unless ``kill``); idempotent."""
        if self._finalizer.detach() is not None:
            _reap(self._proc, self._conn, self._output, kill)


def _shared_outcome(reply: Mapping[str, Any], seconds: float) -> _Outcome:
    """A worker's solve reply as an outcome to judge."""
    log = "\n".join(reply["log"])
    if reply["complex"]:
        return _Outcome(None, log, seconds, problem="complex results are not supported")
    vectors = None
    if reply["plot"] is not None:
        try:
            vectors = _ordered((_canonical(vname, vtype), values)
                               for vname, vtype, values in reply["vectors"])
        except SimulatorError as err:
            return _Outcome(None, log, seconds, problem=str(err))
    return _Outcome(vectors, log, seconds)


class SharedBackend(Backend):
    """libngspice in a reused worker process; see the module docstring."""

    def __init__(self, solver: SolverConfig) -> None:
        super().__init__(solver)
        self._worker: _Worker | None = None

    def solve(self, deck: _Deck, aids: Sequence[ConvergenceAid], name: str, left: float,
              limit: float) -> _Outcome:
        text = deck.render(aids, batch=False)
        worker = self._ready_worker()
        reply, seconds = self._exchange(worker, ("run", text), name, left, limit)
        return _shared_outcome(reply, seconds)

    def load(self, circuit: LoadedCircuit, limit: float) -> None:
        """Parse ``circuit``'s deck in the worker and keep it there; NetlistError when
        ngspice rejects it."""
        worker = self._ready_worker()
        reply, _ = self._exchange(worker, ("load", circuit._deck.render((), batch=False)),
                                  circuit.name, limit, limit, "loading the netlist")
        rejected = _rejection(reply["log"])
        if rejected:
            raise NetlistError(
                f"{circuit.name}: ngspice rejected the netlist:\n"
                + "\n".join("  " + line for line in rejected.splitlines()))
        if not reply["loaded"]:
            raise SimulatorError("ngspice could not load the netlist", netlist=circuit.name,
                                 log="\n".join(reply["log"]))
        if self._worker is worker:
            worker.held = (circuit._serial, 0, 0)

    def solve_loaded(self, circuit: LoadedCircuit, aids: Sequence[ConvergenceAid],
                     left: float, limit: float) -> _Outcome:
        """Re-run ``circuit`` in the worker, reloading it there first when needed."""
        worker = self._ready_worker()
        held = worker.held
        level = len(aids)
        if held is not None and held[0] == circuit._serial and held[1] == level:
            text, since = None, held[2]
        else:
            logger.debug("%s: loading the deck into ngspice worker pid %d (%d aid(s), %d "
                         "alteration(s))", circuit.name, worker.pid, level,
                         len(circuit._state))
            text, since = circuit._deck.render(aids, batch=False), -1
        version = circuit._version
        changes = [(source, kind, list(values))
                   for (source, kind), values in circuit._state.items()
                   if circuit._changed[(source, kind)] > since]
        reply, seconds = self._exchange(worker, ("rerun", text, changes), circuit.name,
                                        left, limit)
        if self._worker is worker and reply["loaded"]:
            worker.held = (circuit._serial, level, version)
        return _shared_outcome(reply, seconds)

    def release(self, circuit: LoadedCircuit) -> None:
        """Remove ``circuit`` from the worker, if the worker holds it."""
        worker = self._worker
        if worker is None or worker.held is None or worker.held[0] != circuit._serial:
            return
        try:
            reply = worker.request(("drop",), _CLOSE_TIMEOUT_S)
        except _WorkerTimeout:
            self._drop_worker(kill=True)
            return
        except _WorkerDied:
            self._worker = None
            return
        if reply["dead"]:
            self._drop_worker(kill=False)

    def close(self) -> None:
        self._drop_worker(kill=False)

    def _drop_worker(self, *, kill: bool) -> None:
        if self._worker is not None:
            self._worker.close(kill=kill)
            self._worker = None

    def _ready_worker(self) -> _Worker:
        """The current worker, started or recycled as needed."""
        if self._worker is not None and self._worker.solves >= self.solver.recycle_after:
            logger.debug("recycling ngspice worker pid %d after %d solves",
                         self._worker.pid, self._worker.solves)
            self._drop_worker(kill=False)
        if self._worker is None:
            # Looked up on its module, where a test may replace it.
            library = discovery._find_library()
            if library is None:
                raise _not_found(["the shared library libngspice was not found"], MIN_VERSION)
            if os.sep in library and not Path(library).exists():
                raise _not_found([f"libngspice {library} does not exist"], MIN_VERSION)
            try:
                worker = _Worker(library)
            except SimulatorNotFoundError as err:
                raise _not_found([str(err)], MIN_VERSION) from None
            problem = _judge_found(
                _Found(library, int(worker.info.get("version", 0)),
                       bool(worker.info.get("klu")), ""), "library", MIN_VERSION)
            if problem:
                worker.close()
                raise _not_found([problem], MIN_VERSION)
            self._worker = worker
        return self._worker

    def _exchange(self, worker: _Worker, message: tuple[Any, ...], name: str, left: float,
                  limit: float, what: str = "the solve") -> tuple[dict[str, Any], float]:
        """Send one request to ``worker``; the reply and its wall time.

        A timeout kills the worker (SimulationTimeout); a dead worker raises SimulatorError;
        a worker whose ngspice declared itself unusable is stopped after its reply.
        """
        start = time.monotonic()
        try:
            reply = worker.request(message, left)
        except _WorkerTimeout:
            self._drop_worker(kill=True)
            raise SimulationTimeout(
                f"{what} did not finish within {limit:g} s; its ngspice worker was killed",
                netlist=name) from None
        except _WorkerDied as err:
            self._worker = None
            raise SimulatorError(f"the ngspice worker died: {err}", netlist=name,
                                 log=err.log) from None
        except BaseException:
            self._drop_worker(kill=True)  # e.g. KeyboardInterrupt mid-solve
            raise
        seconds = time.monotonic() - start
        if reply["dead"]:
            # ngspice declared itself unusable; the next solve gets a fresh library.
            self._drop_worker(kill=False)
        return reply, seconds
