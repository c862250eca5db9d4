"""Run ngspice on netlist text and return its vectors as numpy arrays.

One interface, two backends (:class:`~netlists.config.SolverConfig` ``backend``):

``shared`` (default)
    libngspice, loaded through PySpice's ``NgSpiceShared`` inside a worker *process*
    (``circuitsim/_worker.py``, started as a fresh interpreter, never forked from the caller).
    The worker is reused across solves (no per-solve process start), recycled after
    ``recycle_after`` solves (libngspice grows in memory over many loads), and killed and
    restarted when a solve runs past its time limit or ngspice declares itself unusable.
``batch``
    ``ngspice -b -r out.raw deck.cir``, one process per solve, with the deck and the raw
    file in a temporary directory (ngspice runs in the caller's directory, as the shared
    worker does, so relative ``.include`` paths behave alike); the ASCII raw file is read by
    :mod:`circuitsim.rawfile`.

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
  1.3, which is ~100x slower on large crossbars.
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
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

import numpy as np

from circuitsim.rawfile import read_raw
from netlists.config import SolverConfig
from netlists.errors import (
    ConvergenceError,
    NetlistError,
    SimulationTimeout,
    SimulatorError,
    SimulatorNotFoundError,
)

__all__ = [
    "CONVERGENCE_AIDS",
    "ConvergenceAid",
    "NgspiceInfo",
    "Runner",
    "SimResult",
    "check_ngspice",
]

logger = logging.getLogger(__name__)

MIN_VERSION = 42
"""Oldest ngspice accepted; KLU is required in addition (checked separately)."""

_WORKER_PATH = str(Path(__file__).with_name("_worker.py"))
# Run _worker.py as a script in a fresh interpreter without the current directory on
# sys.path (a stray numpy.py there must not shadow numpy) and without importing circuitsim.
_BOOT = ("import sys; sys.path[:] = [p for p in sys.path if p]; sys.argv = sys.argv[1:]; "
         "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')")
_STARTUP_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 5.0

_INSTALL_HINT = (
    "circuitsim needs ngspice >= {min_version} built with the KLU solver: both the program "
    "`ngspice` and the shared library libngspice.\n"
    "  Debian 12 (bookworm): run `make setup`, or enable bookworm-backports and run\n"
    "      sudo apt-get install -t bookworm-backports ngspice libngspice0\n"
    "  newer Debian or Ubuntu: sudo apt-get install ngspice libngspice0\n"
    "A libngspice in a non-standard place can be named with NGSPICE_LIBRARY_PATH."
)


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NgspiceInfo:
    """What :func:`check_ngspice` found.

    ``version`` is the older of the program's and the library's major versions; ``klu`` is
    true when both were built with KLU.
    """

    version: int
    klu: bool
    executable: str | None
    library: str | None


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
# Finding ngspice
# --------------------------------------------------------------------------------------

def _find_library() -> str | None:
    """Path (or loadable soname) of libngspice, or None.

    ``NGSPICE_LIBRARY_PATH`` (PySpice's variable) wins; then the usual library folders
    (the Python prefix first, for conda); then the dynamic linker's cache.
    """
    env = os.environ.get("NGSPICE_LIBRARY_PATH")
    if env:
        return env.replace("{}", "")
    if sys.platform == "darwin":
        names = ("libngspice.0.dylib", "libngspice.dylib")
        folders = [Path(sys.prefix, "lib"), Path("/opt/homebrew/lib"), Path("/usr/local/lib")]
    else:
        names = ("libngspice.so.0", "libngspice.so")
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
        folders = [Path(sys.prefix, "lib"), Path("/usr/local/lib")]
        if multiarch:
            folders.append(Path("/usr/lib", multiarch))
        folders += [Path("/usr/lib64"), Path("/usr/lib")]
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
    return ctypes.util.find_library("ngspice")


def _find_executable() -> str | None:
    """Path of the ``ngspice`` program on ``PATH``, or None."""
    return shutil.which("ngspice")


@dataclass(frozen=True)
class _Found:
    """Facts about one ngspice artefact; ``problem`` says why it is unusable, if it is."""

    path: str | None
    version: int
    klu: bool
    problem: str


@functools.lru_cache(maxsize=None)
def _executable_facts() -> _Found:
    path = _find_executable()
    if path is None:
        return _Found(None, 0, False, "the ngspice program was not found on PATH")
    try:
        done = subprocess.run([path, "-v"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _Found(path, 0, False, f"`{path} -v` failed: {err}")
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    match = re.search(r"ngspice-(\d+)", text)
    if match is None:
        return _Found(path, 0, False, f"`{path} -v` printed no version: {text.strip()[:200]!r}")
    return _Found(path, int(match.group(1)), "KLU" in text, "")


@functools.lru_cache(maxsize=None)
def _library_facts() -> _Found:
    path = _find_library()
    if path is None:
        return _Found(None, 0, False, "the shared library libngspice was not found")
    try:
        worker = _Worker(path)
    except SimulatorError as err:
        return _Found(path, 0, False, str(err))
    worker.close()
    return _Found(path, int(worker.info.get("version", 0)), bool(worker.info.get("klu")), "")


def _judge_found(found: _Found, what: str, min_version: int) -> str:
    """Why ``found`` is unusable (empty when it is fine)."""
    if found.problem:
        return found.problem
    if found.version < min_version:
        return f"{what} {found.path} is ngspice-{found.version}, older than ngspice-{min_version}"
    if not found.klu:
        return f"{what} {found.path} (ngspice-{found.version}) was built without the KLU solver"
    return ""


def _not_found(problems: Sequence[str], min_version: int) -> SimulatorNotFoundError:
    return SimulatorNotFoundError(
        "; ".join(problems) + ".\n" + _INSTALL_HINT.format(min_version=min_version))


def check_ngspice(*, min_version: int = MIN_VERSION) -> NgspiceInfo:
    """Check that both the ngspice program and libngspice are usable; return what was found.

    The probe (``ngspice -v``, and loading the library in a short-lived worker process) runs
    once per process and is cached. Raises :class:`SimulatorNotFoundError`, with install
    instructions, when either is missing, older than ``min_version``, or built without KLU.
    """
    if isinstance(min_version, bool) or not isinstance(min_version, int) or min_version < 1:
        raise ValueError(f"min_version = {min_version!r} must be a positive whole number")
    exe, lib = _executable_facts(), _library_facts()
    problems = [p for p in (_judge_found(exe, "program", min_version),
                            _judge_found(lib, "library", min_version)) if p]
    if problems:
        raise _not_found(problems, min_version)
    return NgspiceInfo(version=min(exe.version, lib.version), klu=True,
                       executable=exe.path, library=lib.path)


def _clear_caches() -> None:
    """Forget what the probes found (tests, or after installing ngspice mid-session)."""
    _executable_facts.cache_clear()
    _library_facts.cache_clear()


# --------------------------------------------------------------------------------------
# Deck preparation
# --------------------------------------------------------------------------------------

_CARD = re.compile(r"^\s*\.([a-z]+)\b", re.IGNORECASE)
_ANALYSES = frozenset({"op", "dc", "tran", "ac", "noise", "tf", "sens", "pz", "disto", "pss",
                       "sp"})
_SUPPORTED = ("op", "dc", "tran")
_KLU = re.compile(r"\bklu\b", re.IGNORECASE)
_BATCH_CONTROL = (".control", "set num_threads=1", "set filetype=ascii", ".endc")
_SUFFIX = (("meg", 1e6), ("mil", 25.4e-6), ("t", 1e12), ("g", 1e9), ("k", 1e3),
           ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18))
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)([a-z]*)$", re.IGNORECASE)


def _spice_number(token: str) -> float | None:
    """Value of a SPICE number such as ``10n``, ``2.5meg`` or ``1e-6``; None if not one."""
    match = _NUMBER.match(token.strip())
    if match is None:
        return None
    value = float(match.group(1))
    suffix = match.group(2).lower()
    for name, scale in _SUFFIX:
        if suffix.startswith(name):
            return value * scale
    return value  # ngspice ignores letters that are not a scale suffix ("1s" is 1)


@dataclass(frozen=True)
class _Deck:
    """A checked deck, split around its ``.end`` so that cards can be inserted."""

    head: tuple[str, ...]
    tail: tuple[str, ...]
    analysis: str
    tstop: float | None
    has_klu: bool

    def render(self, aids: Sequence[ConvergenceAid], *, batch: bool) -> str:
        extra: list[str] = []
        if not self.has_klu:
            extra.append(".options klu")
        for aid in aids:
            extra.extend(aid.cards)
        if batch:
            extra.extend(_BATCH_CONTROL)
        return "\n".join([*self.head, *extra, *self.tail]) + "\n"


def _logical_lines(lines: Sequence[str], start: int) -> str:
    """Line ``start`` joined with its ``+`` continuation lines."""
    parts = [lines[start]]
    for line in lines[start + 1:]:
        if not line.lstrip().startswith("+"):
            break
        parts.append(line.lstrip()[1:])
    return " ".join(parts)


def _prepare(netlist: str, name: str) -> _Deck:
    """Check the deck against the runner's contract and locate where cards go."""
    if not isinstance(netlist, str):
        raise TypeError(f"netlist must be SPICE text (str), got {type(netlist).__name__}")
    lines = netlist.splitlines()
    if not netlist.strip():
        raise NetlistError(f"{name}: the netlist is empty")
    end = None
    analyses: list[tuple[str, int]] = []
    has_klu = False
    for index in range(1, len(lines)):  # line 0 is the title, whatever it says
        match = _CARD.match(lines[index])
        if match is None:
            continue
        card = match.group(1).lower()
        if card in ("control", "endc"):
            raise NetlistError(
                f"{name}: line {index + 1}: the netlist must not contain a .control block; "
                "the runner drives ngspice itself")
        if card == "end":
            end = index
            break
        if card in _ANALYSES:
            analyses.append((card, index))
        if card in ("options", "option", "opt", "opts") and \
                _KLU.search(_logical_lines(lines, index)):
            has_klu = True
    if end is None:
        raise NetlistError(f"{name}: the netlist has no .end line (truncated?)")
    trailing = [line for line in lines[end + 1:] if line.strip() and not line.lstrip()
                .startswith("*")]
    if trailing:
        raise NetlistError(f"{name}: text after .end: {trailing[0]!r}")
    if len(analyses) != 1:
        found = ", ".join(f".{card} (line {index + 1})" for card, index in analyses) or "none"
        raise NetlistError(
            f"{name}: the netlist must hold exactly one analysis card "
            f"(.op, .dc or .tran); found {found}")
    analysis, index = analyses[0]
    if analysis not in _SUPPORTED:
        raise NetlistError(
            f"{name}: .{analysis} is not supported by the runner; use .op, .dc or .tran")
    tstop = None
    if analysis == "tran":
        tokens = _logical_lines(lines, index).split()
        tstop = _spice_number(tokens[2]) if len(tokens) > 2 else None
    return _Deck(head=tuple(lines[:end]), tail=tuple(lines[end:]), analysis=analysis,
                 tstop=tstop, has_klu=has_klu)


# --------------------------------------------------------------------------------------
# Names and verdicts
# --------------------------------------------------------------------------------------

_WRAPPED = re.compile(r"[vi]\((.+)\)")


def _canonical(name: str, vtype: str | None = None) -> str:
    """The normalized name of a vector (see the module docstring).

    ``vtype`` is given for libngspice's bare names (``out``, ``v1#branch``), which are first
    wrapped the way ngspice's raw-file writer wraps them (``v(out)``, ``i(v1)``); raw-file
    names arrive already wrapped. Sweep scales and ``@device[param]`` vectors are unwrapped.
    """
    text = name.strip().lower()
    if vtype is not None:
        if text.endswith("#branch"):
            text = f"i({text[:-len('#branch')]})"
        elif vtype == "voltage":
            text = f"v({text})"
        elif vtype == "current":
            text = f"i({text})"
    match = _WRAPPED.fullmatch(text)
    if match and (match.group(1).endswith("-sweep") or match.group(1).startswith("@")):
        text = match.group(1)
    return text


def _is_scale(name: str) -> bool:
    return name == "time" or name.endswith("-sweep")


def _ordered(pairs: Iterator[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Scale first, then the rest sorted; duplicate names are an error (never overwritten)."""
    found: dict[str, np.ndarray] = {}
    for name, values in pairs:
        if name in found:
            raise SimulatorError(f"two vectors normalize to the same name {name!r}")
        found[name] = np.asarray(values, dtype=np.float64)
    keys = sorted(found, key=lambda key: (not _is_scale(key), key))
    return {key: found[key] for key in keys}


# Lines that mean ngspice rejected the deck itself (seen on ngspice 46).
_NETLIST_MARKERS = re.compile(
    "|".join([
        r"circuit not parsed",
        r"there aren't any circuits loaded",
        r"error on line",
        r"error in netlist line",
        r"undefined parameter",
        r"unknown subckt",
        r"could not find a valid modelname",
        r"unable to find definition of model",
        r"can't find model",
        r"no such function",
        r"syntax error",
        r"cannot recover",
        r"device already exists",
        r"no data saved",
        r"no such device",
        r"is not in the circuit",
        r"not a valid .* instance line",
    ]),
    re.IGNORECASE)

# Lines that mean the Newton iteration or the time stepping failed.
_CONVERGENCE_MARKERS = re.compile(
    "|".join([
        r"timestep too small",
        r"singular matrix",
        r"iteration limit",
        r"gmin stepping failed",
        r"source stepping failed",
        r"could not be simulated successfully",
        r"dc solution failed",
        r"transient op failed",
        r"no convergence",
        r"too many iterations",
    ]),
    re.IGNORECASE)

_ABORTED = re.compile(r"simulation\(s\) aborted", re.IGNORECASE)


@dataclass
class _Outcome:
    """What one backend call produced, before it is judged."""

    vectors: dict[str, np.ndarray] | None  # normalized; None when no plot was produced
    log: str
    seconds: float
    exit_status: int | None = None  # batch only
    problem: str = ""  # a backend-level reason the data is unusable


def _data_problem(vectors: Mapping[str, np.ndarray] | None, deck: _Deck) -> str:
    """Why the produced data is not a complete result (empty when it is)."""
    if not vectors:
        return "the analysis produced no plot"
    lengths = {len(values) for values in vectors.values()}
    if lengths == {0}:
        return "the analysis produced no data points"
    if len(lengths) != 1:
        return f"the vectors have unequal lengths {sorted(lengths)}"
    if deck.analysis == "op" and lengths != {1}:
        return f"the operating point has {lengths.pop()} points instead of 1"
    bad = [name for name, values in vectors.items() if not np.all(np.isfinite(values))]
    if bad:
        return f"non-finite values in {', '.join(bad[:5])}"
    if deck.analysis == "tran" and deck.tstop is not None and "time" in vectors:
        reached = float(vectors["time"][-1])
        if reached < deck.tstop * (1.0 - 1e-6):
            return f"the transient stopped at t = {reached:.6g} s before tstop = {deck.tstop:g} s"
    return ""


def _judge(outcome: _Outcome, deck: _Deck) -> tuple[str, str]:
    """``("ok" | "netlist" | "convergence" | "other", detail)`` for one outcome."""
    lines = outcome.log.splitlines()
    rejected: list[str] = []
    for index, line in enumerate(lines):
        if _NETLIST_MARKERS.search(line):
            rejected.append(line.strip())
            # "Error on line 4 or its substitute:" and "can't find model 'x' from line"
            # are followed by the offending netlist line.
            if index + 1 < len(lines) and re.search(r"(:|from line)\s*$", line):
                rejected.append(lines[index + 1].strip())
    if rejected:
        return "netlist", "\n".join(dict.fromkeys(rejected))
    problem = outcome.problem or _data_problem(outcome.vectors, deck)
    numeric = bool(problem) and outcome.vectors is not None and not outcome.problem
    if not problem and any(_ABORTED.search(line) for line in lines):
        problem = "ngspice aborted the analysis"
    if outcome.exit_status not in (None, 0):
        status = f"ngspice exited with status {outcome.exit_status}"
        problem = f"{problem} ({status})" if problem else status
    if not problem:
        return "ok", ""
    trouble = [line.strip() for line in lines if _CONVERGENCE_MARKERS.search(line)]
    if trouble or numeric:
        detail = problem
        if trouble:
            detail += ": " + "; ".join(list(dict.fromkeys(trouble))[-3:])
        return "convergence", detail
    return "other", problem


# Resource statistics that ``ngspice -b`` prints at exit, and its transient progress
# redraws ("Reference value : ..."); dropped so that batch and shared
# logs read alike and an error's log tail shows ngspice's messages, not memory sizes.
_BATCH_STATS = re.compile(
    r"^\s*(total analysis time|total elapsed time|total dram available|dram currently "
    r"available|maximum ngspice program size|current ngspice program size|shared ngspice "
    r"pages|text \(code\) pages|stack =|library pages|reference value)", re.IGNORECASE)


def _clean_log(data: bytes) -> str:
    """Batch output as text: no blank lines, no progress redraws, no resource statistics."""
    lines = (line.split("\r")[-1].rstrip()
             for line in data.decode("utf-8", "replace").splitlines())
    return "\n".join(line for line in lines if line.strip() and not _BATCH_STATS.match(line))


# --------------------------------------------------------------------------------------
# The worker process (shared backend)
# --------------------------------------------------------------------------------------

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
        parent, child = socket.socketpair()
        # The worker's own stdout/stderr (ngspice writes almost everything through the
        # callbacks) go to a private file: never into the caller's stdout, never a pipe
        # that could fill up; its tail explains a crash.
        self._output: IO[bytes] = tempfile.TemporaryFile(prefix="circuitsim-worker-")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER_PATH, str(child.fileno()), library],
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
        self.solves += 1
        try:
            self._conn.send(("run", text))
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


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------

class Runner:
    """Solve SPICE decks with ngspice; see the module docstring for the contract.

    One runner drives at most one ngspice at a time; calls from several threads are
    serialized. ``close()`` (or leaving a ``with`` block) stops the worker process; a later
    ``run()`` starts a new one.
    """

    def __init__(self, solver: SolverConfig | None = None) -> None:
        if solver is None:
            solver = SolverConfig()
        if not isinstance(solver, SolverConfig):
            raise TypeError(f"solver must be a SolverConfig, got {type(solver).__name__}")
        self.solver = solver
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self.solver.backend

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process, if one is running."""
        with self._lock:
            self._drop_worker(kill=False)

    def run(self, netlist: str, *, name: str, timeout_s: float | None = None) -> SimResult:
        """Solve ``netlist`` (a complete deck, see module docstring) and return its vectors.

        ``name`` identifies the netlist in errors. ``timeout_s`` (default
        ``solver.timeout_s``) bounds the total solve time of this call, convergence retries
        included. Raises NetlistError, ConvergenceError, SimulationTimeout,
        SimulatorNotFoundError or SimulatorError; never returns partial results.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name = {name!r} must be a non-empty string")
        limit = self.solver.timeout_s if timeout_s is None else timeout_s
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) \
                or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"timeout_s = {timeout_s!r} must be a positive number of seconds")
        deck = _prepare(netlist, name)
        n_aids = min(self.solver.retries, len(CONVERGENCE_AIDS))
        batch = self.backend == "batch"
        with self._lock:
            left = float(limit)
            logs: list[str] = []
            total = 0.0
            failure = ""
            for attempt in range(n_aids + 1):
                aids = CONVERGENCE_AIDS[:attempt]
                text = deck.render(aids, batch=batch)
                if left <= 0:
                    raise SimulationTimeout(
                        f"no time left for attempt {attempt + 1} within {limit:g} s",
                        netlist=name, log="\n".join(logs))
                outcome = (self._solve_batch if batch else self._solve_shared)(
                    text, name, left, float(limit))
                left -= outcome.seconds
                total += outcome.seconds
                if attempt:
                    cards = " ".join(card for aid in aids for card in aid.cards)
                    logs.append(f"* attempt {attempt + 1}, with convergence aid(s) "
                                f"{', '.join(aid.name for aid in aids)}: {cards}")
                logs.append(outcome.log)
                verdict, detail = _judge(outcome, deck)
                if verdict == "ok" and outcome.vectors is not None:
                    if attempt:
                        logger.info("%s: converged with aid(s) %s", name,
                                    ", ".join(aid.name for aid in aids))
                    return SimResult(vectors=outcome.vectors, log="\n".join(logs),
                                     seconds=total, backend=self.backend, attempts=attempt + 1)
                if verdict == "netlist":
                    raise NetlistError(
                        f"{name}: ngspice rejected the netlist:\n"
                        + "\n".join("  " + line for line in detail.splitlines()))
                if verdict == "other":
                    raise SimulatorError(detail, netlist=name, log="\n".join(logs))
                failure = detail
                if attempt < n_aids:
                    logger.warning("%s: no convergence (%s); retrying with convergence aid "
                                   "'%s'", name, detail, CONVERGENCE_AIDS[attempt].name)
            tried = ", ".join(aid.name for aid in CONVERGENCE_AIDS[:n_aids]) or "none"
            raise ConvergenceError(
                f"did not converge after {n_aids + 1} attempt(s) (convergence aids tried: "
                f"{tried}): {failure}", netlist=name, log="\n".join(logs))

    # -- shared backend ----------------------------------------------------------------

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
            library = _find_library()
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

    def _solve_shared(self, text: str, name: str, left: float, limit: float) -> _Outcome:
        worker = self._ready_worker()
        start = time.monotonic()
        try:
            reply = worker.solve(text, left)
        except _WorkerTimeout:
            self._drop_worker(kill=True)
            raise SimulationTimeout(
                f"the solve did not finish within {limit:g} s; its ngspice worker was killed",
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

    # -- batch backend -----------------------------------------------------------------

    def _executable(self) -> str:
        facts = _executable_facts()
        problem = _judge_found(facts, "program", MIN_VERSION)
        if problem or facts.path is None:
            raise _not_found([problem or "ngspice not found"], MIN_VERSION)
        return facts.path

    def _solve_batch(self, text: str, name: str, left: float, limit: float) -> _Outcome:
        executable = self._executable()
        with tempfile.TemporaryDirectory(prefix="circuitsim-ngspice-") as folder:
            deck_path, raw = Path(folder, "deck.cir"), Path(folder, "out.raw")
            deck_path.write_text(text)
            start = time.monotonic()
            # Run in the caller's directory, like the shared worker, so that relative
            # .include/.lib paths resolve the same way on both backends.
            proc = subprocess.Popen(
                [executable, "-b", "-r", str(raw), str(deck_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
