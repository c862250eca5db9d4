"""What runs inside a calibration worker process: one job of one surface, on its own ngspice.

:func:`run_job` is called in a worker (a process of the local pool, a Dask worker, or the
calling process with ``workers=0``) with a plain, picklable task dict. The process keeps ONE
:class:`~circuitsim.runner.Runner` for all the jobs it runs: ngspice's shared library is not
re-entrant, so one ngspice per process, and reusing it saves the worker start-up on every
job (the runner itself recycles its ngspice after ``SolverConfig.recycle_after`` solves). The
runner is created on the first job and replaced when a job comes with another solver
configuration; it is closed when the process exits (or by :func:`close_runner`).

A local pool's workers start with :func:`init_pool_worker`: they die with the process that
started the pool, and leave Ctrl-C to it.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from netlists.config import HardwareConfig, SolverConfig

if TYPE_CHECKING:
    from circuitsim.interfaces import LoadedSpiceCircuit, SpiceRunner
    from circuitsim.runner import Runner

__all__ = ["TASK_KEYS", "close_runner", "init_pool_worker", "run_job", "runner_for"]

TASK_KEYS = ("hardware", "solver", "surface", "grid", "point")
"""The keys of a task dict (see :func:`run_job`)."""

_runner: "Runner | None" = None
# Dask may run several tasks of one worker process in threads; the runner serializes its
# own solves, this lock guards creating and replacing it.
_runner_lock = threading.Lock()


def init_pool_worker(parent_pid: int) -> None:
    """The initializer of a local pool's worker process (``parent_pid``: the pool's owner).

    The worker dies with its parent (parent-death signal and watchdog thread,
    :mod:`circuitsim._lifeline`; the pool is started and shut down by one thread of the
    parent, which the signal needs), and so do its ngspice processes, which follow their
    own parent the same way. It ignores SIGINT, as its children then do: a Ctrl-C reaches
    the whole process group, and the parent alone decides, by stopping the pool.
    """
    from circuitsim._lifeline import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)


def runner_for(solver: SolverConfig) -> "Runner":
    """This process's runner, (re)created for ``solver`` when needed."""
    global _runner
    from circuitsim.runner import Runner

    with _runner_lock:
        if _runner is not None and _runner.solver != solver:
            _runner.close()
            _runner = None
        if _runner is None:
            _runner = Runner(solver)
        return _runner


def close_runner() -> None:
    """Stop this process's ngspice runner, if any; the next job starts a new one."""
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.close()
            _runner = None


#: Added to every job result: how many ngspice solves the job took (a calibration's
#: ``spice_runs``); removed before the surface assembles its results.
SPICE_RUNS_KEY = "__spice_runs__"


class _Counting:
    """Runner proxy that counts solves: ``run`` and each ``run`` of a loaded circuit.

    It is a :class:`~circuitsim.interfaces.SpiceRunner`, as is the runner it wraps.
    """

    def __init__(self, runner: SpiceRunner) -> None:
        self._runner = runner
        self.solves = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.solves += 1
        return self._runner.run(*args, **kwargs)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        return _CountingLoaded(self._runner.load(*args, **kwargs), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


class _CountingLoaded:
    def __init__(self, loaded: LoadedSpiceCircuit, counter: _Counting) -> None:
        self._loaded = loaded
        self._counter = counter

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._counter.solves += 1
        return self._loaded.run(*args, **kwargs)

    def __enter__(self) -> "_CountingLoaded":
        self._loaded.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loaded.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loaded, name)


def run_job(task: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Solve one point of one surface in this process and return its arrays.

    ``task`` holds ``hardware`` (``HardwareConfig.to_dict()``), ``solver``
    (``dataclasses.asdict(SolverConfig)``), ``surface`` (a name known to
    :func:`calibration.surfaces.get_surface`), ``grid`` (``dataclasses.asdict`` of that
    surface's grid) and ``point`` (one of the surface's points). Returns
    ``surface.solve(...)`` with every value as a numpy array. Errors of the surface
    (:class:`~netlists.errors.CircuitSimError`) propagate to the executor, which retries
    and reports them.
    """
    missing = [key for key in TASK_KEYS if key not in task]
    if missing:
        raise ValueError(f"calibration task lacks {missing}; a task has keys {list(TASK_KEYS)}")
    from calibration.surfaces import get_surface

    surface = get_surface(task["surface"])
    hw = HardwareConfig.from_dict(task["hardware"])
    solver = SolverConfig.from_dict(task["solver"])
    grid = surface.grid_type(**task["grid"])
    runner = _Counting(runner_for(solver))
    result = surface.solve(hw, grid, task["point"], runner)
    out: dict[str, np.ndarray] = {SPICE_RUNS_KEY: np.asarray(runner.solves)}
    for name, value in result.items():
        if name == SPICE_RUNS_KEY:
            continue  # counted here, by the proxy, whatever the surface says
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"surface {task['surface']!r} returned {name!r} with dtype "
                            f"object; job results must be numeric arrays")
        out[str(name)] = array
    return out
