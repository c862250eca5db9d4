"""The backends a :class:`~circuitsim.runner.Runner` drives ngspice with, one module each.

* ``base.py``: :class:`Backend`, the interface (solve a deck, load / re-solve / release a
  loaded circuit, close);
* ``shared.py``: :class:`SharedBackend` (``SolverConfig.backend = "shared"``, the default),
  libngspice in a reused worker process, and the client of that process;
* ``batch.py``: :class:`BatchBackend` (``"batch"``), one ``ngspice -b`` process per solve.

:data:`BACKENDS` maps each ``SolverConfig.backend`` value to its class.
"""

from __future__ import annotations

from circuitsim.backends.base import Backend
from circuitsim.backends.batch import BatchBackend
from circuitsim.backends.shared import SharedBackend

__all__ = ["BACKENDS", "Backend", "BatchBackend", "SharedBackend"]

BACKENDS: dict[str, type[Backend]] = {"shared": SharedBackend, "batch": BatchBackend}
"""The backend class for each value of ``SolverConfig.backend``."""
