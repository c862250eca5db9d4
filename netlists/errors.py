"""The package-wide exception hierarchy.

Every error the project raises on purpose derives from :class:`CircuitSimError`, so a
caller can catch one type. The hierarchy lives in the lowest layer (``netlists``) so that
every layer above can raise it; ``circuitsim`` re-exports it for users.
"""

from __future__ import annotations

import re

__all__ = [
    "CircuitSimError",
    "ConfigError",
    "NetlistError",
    "SimulatorError",
    "SimulatorNotFoundError",
    "ConvergenceError",
    "SimulationTimeout",
    "TableError",
    "OutputError",
]

_LEADING_FIELD = re.compile(r"^([A-Za-z_][\w.]*) = ")


class CircuitSimError(Exception):
    """Base class of every error raised by this project.

    ``field``: the option, argument or configuration field the error is about, where one
    is (the command line names the option with it); None otherwise.
    """

    field: str | None = None


class ConfigError(CircuitSimError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the range.

    ``field`` is the name of the offending field or argument (``"array.rows"``, ``"lr"``):
    given as a keyword, or else read from a message that starts the project's way,
    ``"name = value ..."``; None when the error is not about one field.
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        if field is None:
            found = _LEADING_FIELD.match(message) if isinstance(message, str) else None
            field = found.group(1) if found else None
        self.field = field


class NetlistError(CircuitSimError):
    """A netlist could not be rendered, or ngspice rejected it as malformed."""


class SimulatorError(CircuitSimError):
    """ngspice failed. Carries the netlist name and ngspice's own message."""

    def __init__(self, message: str, *, netlist: str = "", log: str = "") -> None:
        self.netlist = netlist
        self.log = log
        text = message
        if netlist:
            text = f"{netlist}: {text}"
        tail = _log_tail(log)
        if tail:
            text = f"{text}\nngspice said:\n{tail}"
        super().__init__(text)


class SimulatorNotFoundError(SimulatorError):
    """ngspice (or its shared library) is missing, too old, or built without KLU."""


class ConvergenceError(SimulatorError):
    """ngspice did not converge, also after the documented convergence aids were tried."""


class SimulationTimeout(SimulatorError):
    """A solve ran past its time limit and its worker was killed."""


class TableError(CircuitSimError):
    """A calibration table is missing, corrupted, of another schema, or read out of range."""


class OutputError(CircuitSimError):
    """A result cannot be written where it was asked for (a read-only or full file system,
    a file where a folder should be); the message names the path and the reason."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _log_tail(log: str, lines: int = 12) -> str:
    kept = [line for line in log.splitlines() if line.strip()]
    return "\n".join("  " + line for line in kept[-lines:])
