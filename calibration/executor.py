"""Run a calibration's independent SPICE jobs on a process pool or a Dask cluster.

:func:`run_jobs` takes the jobs, a picklable top-level job function and a callback that runs
in the *calling* process as each job finishes (the caller persists the result there, so an
interrupted sweep resumes from what was saved). Where the jobs run is a
``concurrent.futures`` executor from :func:`make_executor`:

* ``workers=N`` (default 2): a local :class:`~concurrent.futures.ProcessPoolExecutor` of N
  processes started with ``spawn`` (never ``fork``: a forked child would inherit the
  parent's threads and any ngspice state). Each worker process keeps its own ngspice
  (:mod:`calibration.worker`), so there is one ngspice per worker.
* ``scheduler=ADDRESS``: the same jobs on a Dask distributed cluster, through the executor
  that ``distributed.Client(ADDRESS).get_executor()`` provides. ``distributed`` is imported
  only then; the job function and :mod:`calibration` must be importable on the workers.
* ``workers=0`` (no scheduler): every job runs in the calling process, one after another.
  For debugging: breakpoints and tracebacks work, and nothing is pickled.

Failures
--------
A job that raises is retried up to ``retries`` more times. A worker process that dies (a
segfault in ngspice, the OOM killer, ``kill -9``) breaks the whole process pool: the pool is
recreated and every unfinished job resubmitted. A broken pool does not say which job killed
it, so: when one job was in flight, that job is charged one failed attempt; when several
were, none is charged, and each of them is run again *alone* until it has succeeded or
failed for good, so a job that kills its worker uses up its own attempts and not its
neighbours'. At most ``workers`` jobs are in flight on a local pool at any time, which
keeps the suspects few (a queued job has not run, but would be suspected too). On Dask, a dead
worker's tasks are rescheduled by Dask itself; a task that keeps killing workers reaches
this module as ``KilledWorker`` and counts as a failed attempt. A job that still fails
after all its attempts is a permanent failure; :class:`SweepFailed` is raised, naming the
failed jobs by surface and parameters, as soon as there are more than ``max_failures`` of
them: on a local pool after letting the (at most ``workers``) jobs already running finish
and be reported, so their work is kept; on Dask the jobs not yet finished are cancelled.

Stopping
--------
A local pool's workers die with the process that started them: when it is killed (even with
``kill -9``), its workers and their ngspice processes follow it within a fraction of a
second (:func:`calibration.worker.init_pool_worker`). Any other exception that leaves a
sweep early, KeyboardInterrupt (Ctrl-C) included, terminates the workers at once instead of
waiting for the jobs they run, and propagates; every job that finished before has been
handed to ``on_result``, so what the caller saved stands. Workers ignore SIGINT: a Ctrl-C
at a terminal, which reaches the whole process group, stops them through their parent.
Dask workers are Dask's to manage.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from calibration.worker import init_pool_worker
from netlists.errors import CircuitSimError, ConfigError

__all__ = ["Job", "JobFailure", "SweepFailed", "make_executor", "run_jobs"]

logger = logging.getLogger(__name__)

_LISTED_FAILURES = 20
"""How many failed jobs a SweepFailed message lists (the rest are counted)."""

_STOP_TIMEOUT_S = 5.0
"""How long a terminated pool worker may take to exit before it is killed."""

_WORKER_DIED = ("its worker process died (killed by a signal, crashed in native code, or "
                "ran out of memory)")


@dataclass(frozen=True)
class Job:
    """One independent SPICE job: the ``index``-th point of ``surface``'s sweep."""

    surface: str
    index: int
    point: Mapping[str, Any]


@dataclass(frozen=True)
class JobFailure:
    """A job that failed on every attempt; ``error`` is the last attempt's error."""

    job: Job
    error: str
    attempts: int

    def describe(self) -> str:
        """One line: surface, index, parameters, attempts and the error's first line."""
        first = self.error.strip().splitlines()[0] if self.error.strip() else "(no message)"
        return (f"{self.job.surface}[{self.job.index}] {_point_text(self.job.point)}: "
                f"{first} (after {self.attempts} attempt{'s' if self.attempts != 1 else ''})")


def _point_text(point: Mapping[str, Any]) -> str:
    try:
        return json.dumps(point, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(point)


class SweepFailed(CircuitSimError):
    """More jobs failed permanently than the sweep allows. ``failures`` lists them all."""

    def __init__(self, failures: Sequence[JobFailure], *, total: int, max_failures: int) -> None:
        self.failures = list(failures)
        self.total = total
        self.max_failures = max_failures
        lines = [f"{len(self.failures)} of {total} jobs failed after all their attempts "
                 f"(at most {max_failures} allowed):"]
        lines += ["  " + f.describe() for f in self.failures[:_LISTED_FAILURES]]
        hidden = len(self.failures) - _LISTED_FAILURES
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------

class _SerialExecutor(Executor):
    """Runs each submitted call at once in the calling process (``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - delivered through the future
            future.set_exception(err)
        return future


def _check_workers(workers: Any) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers = {workers!r} must be a whole number >= 0 "
                          f"(0 runs every job in this process)")
    return workers


def _dask_client(scheduler: str, connect_timeout_s: float) -> Any:
    try:
        import distributed
    except ImportError as err:
        raise ConfigError(
            f"--scheduler {scheduler} needs the Dask 'distributed' package, which is not "
            f"installed: pip install 'circuitsim[dask]'") from err
    try:
        return distributed.Client(scheduler, timeout=connect_timeout_s,
                                  set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler!r} within "
                          f"{connect_timeout_s:g} s ({type(err).__name__}: {err}); check the "
                          f"address (e.g. tcp://host:8786) and that the scheduler "
                          f"runs") from err


@contextmanager
def make_executor(*, workers: int = 2, scheduler: str | None = None,
                  connect_timeout_s: float = 10.0) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor for SPICE jobs, shut down when the block ends.

    ``scheduler`` (a Dask scheduler address such as ``tcp://10.0.0.5:8786``) gives Dask's
    executor for that cluster (``workers`` is then ignored; submissions are impure, so a
    resubmitted job runs again); ConfigError, naming the address, when ``distributed`` is
    missing or the scheduler is not reachable within ``connect_timeout_s``. Otherwise
    ``workers >= 1`` gives a process pool of that many ``spawn``-ed processes, and
    ``workers == 0`` an executor that runs each call immediately in this process.
    """
    workers = _check_workers(workers)
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise ConfigError(f"scheduler = {scheduler!r} must be a Dask scheduler address "
                              f"such as tcp://host:8786")
        client = _dask_client(scheduler, connect_timeout_s)
        try:
            executor = client.get_executor(pure=False)
            try:
                yield executor
            finally:
                executor.shutdown(wait=False)  # cancels what is left on an early exit
        finally:
            client.close()
        return
    if workers == 0:
        serial = _SerialExecutor()
        with serial:
            yield serial
        return
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_pool_worker, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # KeyboardInterrupt, or an error of the caller: what runs now is lost anyway.
        _stop_workers(pool)
        raise
    # Jobs not started are dropped; the (at most `workers`) running ones are waited for,
    # so no worker outlives the sweep.
    pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down without waiting for its jobs: its workers are terminated (their
    ngspice processes follow them) and gone when this returns."""
    # No public handle on the workers before Python 3.14's terminate_workers(); copied
    # first, because shutdown() forgets them.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(_STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


# --------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------

def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text.rstrip()


class _Sweep:
    """Book-keeping of one :func:`run_jobs` call (attempts, failures, progress)."""

    def __init__(self, jobs: Sequence[Job], retries: int, max_failures: int,
                 on_result: Callable[[Job, Mapping[str, np.ndarray]], None],
                 progress: Callable[[int, int], None] | None) -> None:
        self.jobs = jobs
        self.retries = retries
        self.max_failures = max_failures
        self.on_result = on_result
        self.progress = progress
        self.attempts = [0] * len(jobs)
        self.failures: list[JobFailure] = []
        self.finished = 0

    @property
    def too_many(self) -> bool:
        return len(self.failures) > self.max_failures

    def _tick(self) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress(self.finished, len(self.jobs))

    def succeeded(self, i: int, result: Mapping[str, np.ndarray]) -> None:
        self.attempts[i] += 1
        self.on_result(self.jobs[i], result)
        self._tick()

    def failed(self, i: int, error: str) -> bool:
        """Charge job ``i`` one failed attempt; True when it should be tried again."""
        self.attempts[i] += 1
        job = self.jobs[i]
        if self.attempts[i] <= self.retries:
            logger.warning("job %s[%d] %s failed (attempt %d of %d), retrying: %s",
                           job.surface, job.index, _point_text(job.point), self.attempts[i],
                           self.retries + 1, error)
            return True
        logger.error("job %s[%d] %s failed permanently after %d attempts: %s", job.surface,
                     job.index, _point_text(job.point), self.attempts[i], error)
        self.failures.append(JobFailure(job, error, self.attempts[i]))
        self._tick()
        return False

    def raise_if_too_many(self) -> None:
        if self.too_many:
            raise SweepFailed(self.failures, total=len(self.jobs),
                              max_failures=self.max_failures)


def _run_serial(sweep: _Sweep, fn: Callable[[Job], Mapping[str, np.ndarray]]) -> None:
    for i, job in enumerate(sweep.jobs):
        while True:
            try:
                result = fn(job)
            except Exception as err:  # noqa: BLE001 - every job error is retried/reported
                if sweep.failed(i, _error_text(err)):
                    continue
                sweep.raise_if_too_many()
                break
            sweep.succeeded(i, result)
            break


def _run_pooled(sweep: _Sweep, fn: Callable[[Job], Mapping[str, np.ndarray]], *,
                workers: int, scheduler: str | None) -> None:
    """Run on a pool (recreated after it breaks) or on Dask, until every job is settled.

    After a local pool breaks, the jobs that were in flight become *suspects*: each is run
    again alone, so that a job that kills its worker is charged its attempts and its
    innocent neighbours are not (a break with one job in flight charges that job).
    """
    queue = list(range(len(sweep.jobs)))
    suspects: set[int] = set()
    # In flight at once: `workers` on a local pool (see the module docstring), all on Dask.
    window = len(queue) if scheduler is not None else workers
    while queue:
        casualties: list[int] = []  # jobs whose future reported the broken pool
        with make_executor(workers=workers, scheduler=scheduler) as executor:
            running: dict[Future, int] = {}
            while queue or running:
                while queue and len(running) < window and not casualties \
                        and not sweep.too_many and not suspects & set(running.values()):
                    i = queue[0]
                    if i in suspects and running:
                        break  # a suspect runs alone: wait for the others to finish
                    queue.pop(0)
                    try:
                        running[executor.submit(fn, sweep.jobs[i])] = i
                    except BrokenProcessPool:
                        queue.insert(0, i)
                        casualties.append(-1)  # no job to blame; just restart the pool
                        break
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        casualties.append(i)
                        continue
                    except (KeyboardInterrupt, GeneratorExit):
                        raise
                    except BaseException as err:  # noqa: BLE001 - retried, then reported
                        if sweep.failed(i, _error_text(err)):
                            queue.append(i)
                        continue
                    sweep.succeeded(i, result)
                if sweep.too_many and scheduler is not None:
                    break  # leaving the block cancels the Dask jobs still queued or running
                if (sweep.too_many or casualties) and not running:
                    break
        blamed = [i for i in casualties if i >= 0]
        if len(blamed) == 1:
            if sweep.failed(blamed[0], _WORKER_DIED):
                queue.insert(0, blamed[0])
        elif blamed:
            logger.warning("a worker process died with %d jobs in flight; running each of "
                           "them alone to find the one that kills its worker", len(blamed))
            suspects.update(blamed)
            queue[:0] = sorted(blamed)
        sweep.raise_if_too_many()
        # Suspects first, then the rest in job order.
        queue.sort(key=lambda i: (i not in suspects, i))


def run_jobs(jobs: Sequence[Job], fn: Callable[[Job], Mapping[str, np.ndarray]], *,
             workers: int = 2, scheduler: str | None = None, retries: int = 2,
             max_failures: int = 0,
             on_result: Callable[[Job, Mapping[str, np.ndarray]], None],
             progress: Callable[[int, int], None] | None = None) -> list[JobFailure]:
    """Run ``fn(job)`` for every job; hand each result to ``on_result`` as it arrives.

    ``fn`` must be picklable (a top-level function, or a ``functools.partial`` of one) and
    return name -> array. ``on_result(job, result)`` and ``progress(finished, total)`` run
    in this process, in completion order; ``finished`` counts jobs settled either way
    (succeeded, or failed for good). An exception from either callback stops the sweep and
    propagates. ``workers``/``scheduler`` choose where jobs run (:func:`make_executor`;
    ``workers=0`` runs them here, serially, for debugging). Each job gets ``1 + retries``
    attempts. Returns the permanent failures when there are at most ``max_failures`` of
    them; raises :class:`SweepFailed` otherwise. Job order in ``jobs`` is submission order.
    """
    _check_workers(workers)
    for name, value in (("retries", retries), ("max_failures", max_failures)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} = {value!r} must be a whole number >= 0")
    seen: set[tuple[str, int]] = set()
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"run_jobs takes Job objects, got {type(job).__name__}")
        if (job.surface, job.index) in seen:
            raise ValueError(f"job {job.surface}[{job.index}] is listed twice")
        seen.add((job.surface, job.index))
    sweep = _Sweep(jobs, retries, max_failures, on_result, progress)
    if not jobs:
        return []
    if workers > 0 and scheduler is None:
        try:
            pickle.dumps(fn)
        except Exception as err:  # noqa: BLE001 - PicklingError, AttributeError, TypeError
            raise TypeError(f"run_jobs: the job function {fn!r} cannot be sent to worker "
                            f"processes ({err}); use a top-level function or a "
                            f"functools.partial of one, or workers=0") from err
    if workers == 0 and scheduler is None:
        _run_serial(sweep, fn)
    else:
        _run_pooled(sweep, fn, workers=workers, scheduler=scheduler)
    sweep.raise_if_too_many()
    return list(sweep.failures)
