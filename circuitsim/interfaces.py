"""What code that solves decks through a runner may rely on: :class:`SpiceRunner`.

:class:`circuitsim.runner.Runner` implements it; so do the proxy that counts a calibration
job's solves (``calibration.worker``) and the stand-ins of tests. The device, tile and
write-and-verify code and the calibration surfaces take their ``runner`` argument as a
:class:`SpiceRunner`. They read the runner's solver settings, where they need them, with
``getattr(runner, "solver", None)``: a stand-in may have none.

Imports only the standard library at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import SimResult

__all__ = ["LoadedSpiceCircuit", "SpiceRunner"]


class LoadedSpiceCircuit(Protocol):
    """A deck kept loaded for re-solves with altered sources, as
    :class:`circuitsim.runner.LoadedCircuit`; a context manager that closes it."""

    def alter(self, changes: Mapping[str, float | Sequence[float]]) -> None: ...

    def run(self, *, timeout_s: float | None = None) -> SimResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> LoadedSpiceCircuit: ...

    def __exit__(self, *exc: object) -> None: ...


class SpiceRunner(Protocol):
    """Solves SPICE decks, as :class:`circuitsim.runner.Runner` (see its contract)."""

    def run(self, netlist: str, *, name: str, timeout_s: float | None = None) -> SimResult: ...

    def load(self, netlist: str, *, name: str,
             timeout_s: float | None = None) -> LoadedSpiceCircuit: ...
