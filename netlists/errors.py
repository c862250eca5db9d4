"""The package-wide exception hierarchy.

Every error the project raises on purpose derives from :class:`CircuitSimError`, so a
caller can catch one type. The hierarchy lives in the lowest layer (``netlists``) so that
every layer above can raise it; ``circuitsim`` re-exports it for users.
"""

from __future__ import annotations

__all__ = [
    "CircuitSimError",
    "ConfigError",
    "NetlistError",
    "SimulatorError",
    "SimulatorNotFoundError",
    "ConvergenceError",
    "SimulationTimeout",
    "TableError",
]


class CircuitSimError(Exception):
    """Base class of every error raised by this project."""


class ConfigError(CircuitSimError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the range."""


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


def _log_tail(log: str, lines: int = 12) -> str:
    kept = [line for line in log.splitlines() if line.strip()]
    return "\n".join("  " + line for line in kept[-lines:])
