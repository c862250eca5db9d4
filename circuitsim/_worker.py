"""Worker process that hosts one libngspice for the runner's shared backend (private).

Why a separate process: libngspice is not re-entrant (two threads on one instance crash
the process), keeps global state between loads, grows in memory over many loads, and some
malformed decks leave it in a state it "cannot recover" from. Hosting it in a throw-away
process lets the runner kill a hung solve, recycle the library periodically, and restart it
after a fatal error without touching the caller's process.

The runner's shared backend (:mod:`circuitsim.backends.shared`) starts this file as a fresh
interpreter (``python -c <boot> _worker.py FD LIB PID``, never a fork of the caller, which
may hold torch or threads) and talks to it over the socket ``FD`` with
:class:`multiprocessing.connection.Connection` messages. The worker ends
when the runner's process ``PID`` ends, even mid-solve or killed with ``kill -9``
(``_lifeline.py``'s watchdog thread; not the parent-death signal, which would follow the
thread that started the worker, and a runner may be used from several threads):

* worker -> runner, once: ``("ready", info)`` or ``("unavailable", message)``;
* runner -> worker: ``("run", deck_text)`` -> ``("done", reply)`` (see :meth:`_Host.solve`),
  or ``("crash", traceback)`` after which the worker exits; ``("close",)`` ends it.
* kept circuits (:class:`circuitsim.runner.LoadedCircuit`): ``("load", deck_text)`` parses a
  deck and keeps it loaded (:meth:`_Host.load`); ``("rerun", deck_text_or_None,
  alterations)`` optionally (re)loads a deck, applies source alterations and re-runs the
  kept circuit's analysis (:meth:`_Host.rerun`); ``("drop",)`` removes the kept circuit.
  Each is answered with ``("done", reply)``. At most one circuit is kept: ``run`` and
  ``load`` drop it first.

This module imports only the standard library, numpy and PySpice, so that it starts fast
and never imports torch or the rest of the project. It makes no decision about success or
failure: it returns the plot (if any) and ngspice's output, and the runner judges them.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import time
import traceback
import warnings
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# ngspice's vector type codes (``enum simulation_types`` in ngspice's sharedspice.h); stable
# across versions for the three kinds the runner maps to names.
_TYPE_NAMES = {1: "time", 3: "voltage", 4: "current"}

# Markers ngspice prints when the shared library is left in a state where every later load
# fails ("ngspice.dll cannot recover and awaits to be reset or detached").
_DEAD_MARKERS = ("cannot recover", "awaits to be reset")

# Name of the scratch vector (in the 'const' plot) through which alteration values are
# handed to ngspice's ``alter`` command; deleted right after use.
_SCRATCH = "circuitsim_alter"
_ALTER_PARAMS = {"dc": "dc", "pwl": "pwl"}
# Source names the command line passes through unchanged (no $ substitution, no > redirect).
_NAME = re.compile(r"[a-z0-9_.:+\-]+")


class _Host:
    """One loaded libngspice, driven synchronously through PySpice's ``NgSpiceShared``.

    PySpice is used to load the library and register the callbacks; commands and circuit
    loading call the C API directly so that PySpice's heuristics (which flag a successful
    solve as failed when a line contains "error" or a note appears on stderr) play no part.
    """

    def __init__(self, library: str) -> None:
        # PySpice logs "Unsupported Ngspice version 46" (harmless) and every stderr line at
        # ERROR level; the runner collects ngspice's output itself.
        logging.getLogger("PySpice").setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from PySpice.Spice.NgSpice.Shared import NgSpiceShared, ffi

        host = self
        self._ffi = ffi
        self._lines: list[str] = []
        self.exited = False
        self.kept = False  # a circuit stays loaded between requests (load / rerun)

        class _Shared(NgSpiceShared):  # type: ignore[misc]
            LIBRARY_PATH = library

            def send_char(self, message: str, ngspice_id: int) -> int:
                host._collect(message)
                return 0

            def send_stat(self, message: str, ngspice_id: int) -> int:
                return 0

            def _get_version(self) -> None:
                # PySpice's version probe raises when ngspice prints anything on stderr
                # (e.g. a missing spinit note); read the banner without that heuristic.
                host._lines.clear()
                self._ngspice_shared.ngSpice_Command(b"version -f")
                banner = "\n".join(host._lines)
                match = re.search(r"ngspice-(\d+)", banner)
                self._ngspice_version = int(match.group(1)) if match else 0
                self._has_xspice = "XSPICE" in banner
                self._has_cider = "CIDER" in banner
                self._extensions = []
                host.banner = banner

            @staticmethod
            def _exit(exit_status: int, immediate_unloading: bool, quit_exit: bool,
                      ngspice_id: int, user_data: Any) -> int:
                # ngspice asks its host to unload it (fatal error or 'quit'); this process
                # reports the solve and exits, and the runner starts a fresh one.
                host.exited = True
                return exit_status

        self.banner = ""
        self._shared = _Shared(ngspice_id=0, send_data=False)
        self._lib = self._shared._ngspice_shared
        self.info = {
            "version": int(self._shared.ngspice_version or 0),
            "klu": "KLU" in self.banner,
            "banner": self.banner,
            "library": library,
        }
        # spinit sets num_threads=8; BSIM3/4 OpenMP is erratic and slow on a busy machine.
        self._command("set num_threads=1")

    def _collect(self, message: str) -> None:
        """Keep one line of ngspice output, without its 'stdout '/'stderr ' prefix."""
        _, _, text = message.partition(" ")
        # Progress lines are redrawn with carriage returns; keep the last drawing only.
        text = text.split("\r")[-1].rstrip()
        if text.strip() and not text.lstrip().startswith("Reference value"):
            self._lines.append(text)

    def _command(self, command: str) -> None:
        self._lib.ngSpice_Command(command.encode("ascii"))

    def _load(self, text: str) -> int:
        lines = text.splitlines()
        title = lines[0] if lines and lines[0].strip() else "untitled"
        body = [line for line in lines[1:] if line.strip()]
        keep = [self._ffi.new("char[]", line.encode("utf-8")) for line in [title, *body, ""]]
        array = self._ffi.new("char *[]", [*keep, self._ffi.NULL])
        return int(self._lib.ngSpice_Circ(array))

    def _read_plot(self, plot: str) -> tuple[list[tuple[str, str, np.ndarray]], bool]:
        """The vectors of ``plot`` as ``(name, type, values)``, and whether any was complex."""
        ffi = self._ffi
        found: list[tuple[str, str, np.ndarray]] = []
        complex_data = False
        names = self._lib.ngSpice_AllVecs(plot.encode("utf-8"))
        k = 0
        while names != ffi.NULL and names[k] != ffi.NULL:
            name = ffi.string(names[k]).decode("utf-8", "replace")
            k += 1
            info = self._lib.ngGet_Vec_Info(f"{plot}.{name}".encode("utf-8"))
            if info == ffi.NULL:
                continue
            length = int(info.v_length)
            if info.v_realdata != ffi.NULL:
                values = np.frombuffer(ffi.buffer(info.v_realdata, 8 * length),
                                       dtype=np.float64).copy()
            elif length and info.v_compdata != ffi.NULL:
                complex_data = True
                continue
            else:
                values = np.empty(0, dtype=np.float64)
            found.append((name, _TYPE_NAMES.get(int(info.v_type), "other"), values))
        return found, complex_data

    def _begin(self) -> float:
        self._lines.clear()
        self._shared.clear_output()
        self._command("set num_threads=1")
        return time.perf_counter()

    def _run_analysis(self) -> tuple[str | None, list[tuple[str, str, np.ndarray]], bool]:
        """Run the current circuit's analysis; the new plot's name, vectors, complex flag."""
        self._command("run")
        current = self._lib.ngSpice_CurPlot()
        name = self._ffi.string(current).decode("utf-8") if current != self._ffi.NULL else ""
        if name and name != "const":
            vectors, complex_data = self._read_plot(name)
            return name, vectors, complex_data
        return None, [], False

    def _drop_kept(self) -> None:
        """Remove the kept circuit (and every plot), if there is one."""
        if self.kept:
            self.kept = False
            self._command("destroy all")
            self._command("remcirc")
            self._lib.ngSpice_Command(self._ffi.NULL)

    def solve(self, text: str) -> dict[str, Any]:
        """Load ``text``, run its analysis, and return what ngspice produced.

        The reply holds ``plot`` (the new plot's name, or ``None``), ``vectors`` (list of
        ``(name, type, values)`` with ngspice's own names), ``complex``, ``log`` (output
        lines), ``seconds`` (load + run wall time), and ``dead`` (the library must not be
        used again; the worker exits after replying). A kept circuit is dropped first.
        """
        self._drop_kept()
        start = self._begin()
        rc = self._load(text)
        dead = rc != 0 or self._dead()
        plot: str | None = None
        vectors: list[tuple[str, str, np.ndarray]] = []
        complex_data = False
        if not dead:
            plot, vectors, complex_data = self._run_analysis()
        seconds = time.perf_counter() - start
        log = list(self._lines)
        dead = dead or self._dead() or self.exited
        if not dead:
            self._free(keep_circuit=False)
            dead = self.exited
        return {"plot": plot, "vectors": vectors, "complex": complex_data, "log": log,
                "seconds": seconds, "dead": dead}

    def load(self, text: str) -> dict[str, Any]:
        """Parse ``text`` and keep it loaded (dropping any kept circuit first).

        The reply holds ``log``, ``seconds``, ``dead`` and ``loaded`` (a circuit is now
        kept). Whether ngspice accepted the deck is for the runner to judge from the log.
        """
        self._drop_kept()
        start = self._begin()
        dead = self._load_kept(text)
        seconds = time.perf_counter() - start
        dead = dead or self.exited
        if not dead:
            self._lib.ngSpice_Command(self._ffi.NULL)
        return {"log": list(self._lines), "seconds": seconds, "dead": dead,
                "loaded": self.kept and not dead}

    def _load_kept(self, text: str) -> bool:
        """Load ``text`` as the kept circuit; whether the library is now unusable."""
        rc = self._load(text)
        dead = rc != 0 or self._dead()
        self.kept = not dead
        return dead

    def rerun(self, text: str | None,
              alterations: list[tuple[str, str, list[float]]]) -> dict[str, Any]:
        """Re-run the kept circuit after applying ``alterations``; reply as :meth:`solve`.

        ``text``, when given, is loaded first (replacing any kept circuit): the runner sends
        it after a worker restart, or when a retry needs different convergence aids.
        ``alterations`` are ``(source, "dc" | "pwl", values)``; the values are written
        straight into an ngspice vector (bit-exact, and no limit on the PWL length: an
        ngspice command line is cut at 1024 characters without a word) that ``alter``
        then reads. All plots are destroyed after reading; the circuit stays loaded.
        The reply adds ``loaded`` (a circuit is still kept).
        """
        if text is not None:
            self._drop_kept()
        start = self._begin()
        dead = self._load_kept(text) if text is not None else False
        plot: str | None = None
        vectors: list[tuple[str, str, np.ndarray]] = []
        complex_data = False
        if not dead and not self.kept:
            self._lines.append("circuitsim worker: no circuit is loaded")
        elif not dead:
            for source, kind, values in alterations:
                self._alter(source, kind, values)
            plot, vectors, complex_data = self._run_analysis()
        seconds = time.perf_counter() - start
        log = list(self._lines)
        dead = dead or self._dead() or self.exited
        if not dead:
            self._free(keep_circuit=True)
            dead = self.exited
        return {"plot": plot, "vectors": vectors, "complex": complex_data, "log": log,
                "seconds": seconds, "dead": dead, "loaded": self.kept and not dead}

    def _free(self, *, keep_circuit: bool) -> None:
        """Free the plots (and, unless kept, the parsed circuit) and clear the command
        history, so that memory stays flat over thousands of solves."""
        self._command("destroy all")
        if not keep_circuit:
            self._command("remcirc")
        self._lib.ngSpice_Command(self._ffi.NULL)

    def _alter(self, source: str, kind: str, values: list[float]) -> None:
        """``alter SOURCE dc|pwl = <vector holding values>``."""
        if not _NAME.fullmatch(source) or kind not in _ALTER_PARAMS or not values:
            raise ValueError(f"bad alteration {source!r} {kind!r} ({len(values)} values)")
        data = np.ascontiguousarray(values, dtype=np.float64)
        self._command("setplot const")
        self._command(f"let {_SCRATCH} = vector({len(data)})")
        info = self._lib.ngGet_Vec_Info(_SCRATCH.encode("ascii"))
        if info == self._ffi.NULL or int(info.v_length) != len(data) \
                or info.v_realdata == self._ffi.NULL:
            raise RuntimeError(f"ngspice did not create the scratch vector {_SCRATCH}")
        self._ffi.memmove(info.v_realdata, data.tobytes(), 8 * len(data))
        self._command(f"alter {source} {_ALTER_PARAMS[kind]} = {_SCRATCH}")
        self._command(f"unlet {_SCRATCH}")

    def drop(self) -> dict[str, Any]:
        """Remove the kept circuit; reply ``log`` and ``dead``."""
        self._lines.clear()
        self._drop_kept()
        return {"log": list(self._lines), "dead": self.exited}

    def _dead(self) -> bool:
        return any(marker in line for line in self._lines for marker in _DEAD_MARKERS)


def serve(conn: Connection, library: str) -> int:
    """Load ``library``, report readiness on ``conn``, then answer requests until told to stop."""
    try:
        host = _Host(library)
    except BaseException as err:  # noqa: BLE001 - reported to the runner, which raises
        conn.send(("unavailable", f"{type(err).__name__}: {err}"))
        return 1
    conn.send(("ready", host.info))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0  # the runner went away
        if message[0] == "close":
            return 0
        handlers = {"run": host.solve, "load": host.load, "rerun": host.rerun,
                    "drop": host.drop}
        handler = handlers.get(message[0])
        if handler is None:
            conn.send(("crash", f"unknown request {message[0]!r}"))
            return 1
        try:
            reply = handler(*message[1:])
        except BaseException:  # noqa: BLE001 - reported to the runner, which raises
            conn.send(("crash", traceback.format_exc()))
            return 1
        conn.send(("done", reply))
        if reply["dead"]:
            return 0


def _lifeline() -> Any:
    """``_lifeline.py`` beside this file, loaded by path (the package is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(
        "circuitsim_lifeline", Path(__file__).with_name("_lifeline.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load _lifeline.py beside {__file__}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` is ``[socket_fd, library_path, runner_pid]``."""
    fd, library, runner_pid = int(argv[0]), argv[1], int(argv[2])
    _lifeline().exit_with_parent(runner_pid, death_signal=False)
    conn = Connection(fd)
    try:
        return serve(conn, library)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
