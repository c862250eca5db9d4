"""calibration.executor and calibration.worker: retries, killed workers, ngspice per worker, Dask.

The job functions below are top-level so that the process pool and Dask can pickle them;
they count their attempts in marker files, because attempts happen in other processes.
This module also stands in for ``calibration.surfaces`` (``get_surface`` below) so that
``calibration.worker.run_job`` can be exercised with a tiny resistor divider in ngspice.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

import proctree
from calibration import worker
from calibration.executor import Job, JobFailure, SweepFailed, make_executor, run_jobs
from netlists.config import SolverConfig, preset
from netlists.errors import ConfigError, ConvergenceError

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# Job functions (run in worker processes)
# --------------------------------------------------------------------------------------

def _count_attempt(job: Job) -> int:
    """Record one attempt of ``job`` in its marker file; return the attempt number (1-based)."""
    marker = Path(job.point["dir"]) / f"{job.surface}-{job.index}.attempts"
    with open(marker, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return len(marker.read_text().splitlines())


def _attempts(directory: Path, job: Job) -> int:
    marker = directory / f"{job.surface}-{job.index}.attempts"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def square_job(job: Job) -> dict[str, np.ndarray]:
    """Fails on its first ``fail_first`` attempts, dies on its first ``kill_first``, sleeps
    ``sleep_s`` first."""
    attempt = _count_attempt(job)
    time.sleep(job.point.get("sleep_s", 0))
    if attempt <= job.point.get("kill_first", 0):
        os.kill(os.getpid(), signal.SIGKILL)
    if attempt <= job.point.get("fail_first", 0):
        raise ConvergenceError(f"transient failure on attempt {attempt}")
    x = job.point["x"]
    return {"y": np.array(x * x, dtype=float), "pid": np.array(os.getpid())}


# --------------------------------------------------------------------------------------
# A stand-in surface module: a resistor divider solved in ngspice
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DividerGrid:
    r_top_ohm: float = 1000.0
    r_bottom_ohm: float = 2000.0


class _DividerSurface:
    name = "divider"
    grid_type = DividerGrid

    def solve(self, hw: Any, grid: DividerGrid, point: Mapping[str, Any],
              runner: Any) -> dict[str, Any]:
        deck = (f"divider\nV1 in 0 DC {point['v_in']!r}\nR1 in out {grid.r_top_ohm!r}\n"
                f"R2 out 0 {grid.r_bottom_ohm!r}\n.op\n.end\n")
        result = runner.run(deck, name=f"divider-{point['v_in']}")
        # run_job hands surfaces a proxy that counts solves; its _runner is the real one.
        return {"v_out": result["v(out)"], "pid": os.getpid(), "runner": id(runner._runner),
                # private: the ngspice worker process (none on the batch backend)
                "ngspice_pid": getattr(getattr(runner._backend, "_worker", None), "pid", -1),
                "rows": hw.array.rows}


_SURFACES = {"divider": _DividerSurface()}


def get_surface(name: str) -> Any:
    """``calibration.surfaces.get_surface`` as seen by the worker in these tests."""
    return _SURFACES[name]


def divider_job(job: Job) -> dict[str, np.ndarray]:
    """Run ``calibration.worker.run_job`` with this module standing in for the surfaces."""
    sys.modules["calibration.surfaces"] = sys.modules[__name__]
    return worker.run_job(job.point)


def _divider_jobs(v_ins: list[float], solver: SolverConfig | None = None) -> list[Job]:
    task = {"hardware": preset("tiny").to_dict(),
            "solver": dataclasses.asdict(solver or SolverConfig()),
            "surface": "divider", "grid": dataclasses.asdict(DividerGrid())}
    return [Job("divider", i, {**task, "point": {"v_in": v}}) for i, v in enumerate(v_ins)]


def _collect() -> tuple[dict[int, Mapping[str, np.ndarray]], Any]:
    results: dict[int, Mapping[str, np.ndarray]] = {}

    def on_result(job: Job, result: Mapping[str, np.ndarray]) -> None:
        assert job.index not in results
        results[job.index] = result

    return results, on_result


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

def test_pool_retries_failed_jobs_and_reports_permanent_failures(tmp_path: Path) -> None:
    d = str(tmp_path)
    jobs = [Job("sq", i, {"x": i, "dir": d, "fail_first": 1 if i == 2 else 0})
            for i in range(5)]
    jobs.append(Job("sq", 5, {"x": 5, "dir": d, "fail_first": 99, "g_us": 41.5}))
    results, on_result = _collect()
    progress: list[tuple[int, int]] = []
    failures = run_jobs(jobs, square_job, workers=2, retries=1, max_failures=1,
                        on_result=on_result, progress=lambda *a: progress.append(a))
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert [float(results[i]["y"]) for i in range(5)] == [0, 1, 4, 9, 16]
    assert {int(r["pid"]) for r in results.values()} - {os.getpid()}  # ran in workers
    assert [_attempts(tmp_path, j) for j in jobs] == [1, 1, 2, 1, 1, 2]
    assert len(failures) == 1 and isinstance(failures[0], JobFailure)
    assert failures[0].job == jobs[5] and failures[0].attempts == 2
    assert "ConvergenceError: transient failure on attempt 2" in failures[0].error
    assert progress == [(k, 6) for k in range(1, 7)]


def test_too_many_failures_raise_sweep_failed_naming_the_parameters(tmp_path: Path) -> None:
    d = str(tmp_path)
    jobs = [Job("cell_read", i, {"x": i, "dir": d, "g_us": 40.0 + i,
                                 "fail_first": 99 if i in (1, 3) else 0}) for i in range(4)]
    results, on_result = _collect()
    with pytest.raises(SweepFailed) as caught:
        run_jobs(jobs, square_job, workers=0, retries=2, max_failures=1, on_result=on_result)
    message = str(caught.value)
    assert "2 of 4 jobs failed after all their attempts (at most 1 allowed)" in message
    assert 'cell_read[1] {"dir": ' in message and '"g_us": 41.0' in message
    assert '"g_us": 43.0' in message and "after 3 attempts" in message
    assert [f.job.index for f in caught.value.failures] == [1, 3]
    assert sorted(results) == [0, 2]  # the good results were still handed over


def test_killed_worker_is_replaced_and_its_jobs_resubmitted(tmp_path: Path) -> None:
    d = str(tmp_path)
    jobs = [Job("sq", i, {"x": i, "dir": d, "kill_first": 1 if i == 1 else 0})
            for i in range(4)]
    jobs.append(Job("sq", 4, {"x": 4, "dir": d, "kill_first": 99}))  # kills every worker
    results, on_result = _collect()
    failures = run_jobs(jobs, square_job, workers=2, retries=1, max_failures=1,
                        on_result=on_result)
    assert sorted(results) == [0, 1, 2, 3]
    assert [float(results[i]["y"]) for i in range(4)] == [0, 1, 4, 9]
    assert _attempts(tmp_path, jobs[1]) == 2
    assert [f.job.index for f in failures] == [4]
    assert "worker process died" in failures[0].error and failures[0].attempts == 2


# A sweep of a quick job and two that sleep for a minute on a pool of 2, in a process of its
# own; prints each result as it is handed over, and "interrupted" on KeyboardInterrupt.
_SLEEPY_SWEEP = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from calibration.executor import Job, run_jobs
    from test_calibration_executor import square_job
    jobs = [Job("sq", i, {"x": i, "dir": sys.argv[1], "sleep_s": 60 if i else 0})
            for i in range(3)]
    try:
        run_jobs(jobs, square_job, workers=2,
                 on_result=lambda job, result: print("result", job.index, flush=True))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def _start_sleepy_sweep(directory: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start _SLEEPY_SWEEP; return it once both sleepers run, with all its descendants."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPY_SWEEP, str(directory),
                             str(REPO / "tests")], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    sleepers = [directory / f"sq-{i}.attempts" for i in (1, 2)]
    deadline = time.monotonic() + 60
    while not all(m.exists() for m in sleepers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(m.exists() for m in sleepers), "both sleeping jobs started"
    return proc, proctree.descendants(proc.pid)


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    proc, below = _start_sleepy_sweep(tmp_path)
    try:
        workers = [int(m.read_text()) for m in tmp_path.glob("sq-*.attempts")]
        assert set(workers) <= set(below) and len(set(workers)) == 2
        assert proctree.kill_parent(proc, below) == {}
    finally:
        proctree.clean_up(proc, below)


def test_interrupt_stops_the_workers_at_once_and_propagates(tmp_path: Path) -> None:
    proc, below = _start_sleepy_sweep(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=5)  # not the sleepers' minute
        assert proc.returncode == 0
        assert stdout.splitlines() == ["result 0", "interrupted"]
        assert proctree.survivors(below, timeout_s=5) == {}
    finally:
        proctree.clean_up(proc, below)


@pytest.mark.spice
def test_serial_mode_runs_in_process_and_reuses_one_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calibration.surfaces", sys.modules[__name__])
    results, on_result = _collect()
    try:
        run_jobs(_divider_jobs([3.0, 1.5]), divider_job, workers=0, on_result=on_result)
        assert {int(r["pid"]) for r in results.values()} == {os.getpid()}
        assert len({int(r["runner"]) for r in results.values()}) == 1
        np.testing.assert_allclose([float(results[i]["v_out"][0]) for i in (0, 1)],
                                   [2.0, 1.0], rtol=1e-9)
        assert int(results[0]["rows"]) == preset("tiny").array.rows
        first = worker._runner
        assert first is not None and int(results[0]["runner"]) == id(first)
        # Another solver configuration gets a new runner (the old one is closed).
        out = divider_job(_divider_jobs([3.0], SolverConfig(backend="batch"))[0])
        assert worker._runner is not first and worker._runner.backend == "batch"
        assert int(out["runner"]) == id(worker._runner)
        assert int(out[worker.SPICE_RUNS_KEY]) == 1, "each job reports its ngspice solves"
        assert float(out["v_out"][0]) == pytest.approx(2.0, rel=1e-9)
        with pytest.raises(ValueError, match="lacks"):
            worker.run_job({"surface": "divider"})
    finally:
        worker.close_runner()


@pytest.mark.spice
def test_process_pool_runs_one_ngspice_per_worker() -> None:
    results, on_result = _collect()
    v_ins = [1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    failures = run_jobs(_divider_jobs(v_ins), divider_job, workers=2, on_result=on_result)
    assert failures == []
    # 2k / (1k + 2k) of the input, to ngspice's precision.
    np.testing.assert_allclose([float(results[i]["v_out"][0]) for i in range(6)],
                               np.array(v_ins) * 2 / 3, rtol=1e-9)
    by_pid: dict[int, set[tuple[int, int]]] = {}
    for r in results.values():
        by_pid.setdefault(int(r["pid"]), set()).add((int(r["runner"]), int(r["ngspice_pid"])))
    assert os.getpid() not in by_pid
    assert all(len(v) == 1 for v in by_pid.values())  # one runner, one ngspice per process
    assert len({ng for v in by_pid.values() for _, ng in v}) == len(by_pid)


@pytest.mark.spice
@pytest.mark.slow
def test_dask_local_cluster_runs_the_same_sweep(tmp_path: Path) -> None:
    import distributed  # a test requirement (pyproject's `test` extra): never skipped

    # dashboard_address=None would still bind the scheduler's HTTP server to port 8787 (and
    # warn when another cluster holds it); ":0" takes any free port.
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    try:
        address = cluster.scheduler_address
        results, on_result = _collect()
        failures = run_jobs(_divider_jobs([1.5, 3.0, 6.0]), divider_job, scheduler=address,
                            on_result=on_result)
        assert failures == []
        np.testing.assert_allclose([float(results[i]["v_out"][0]) for i in range(3)],
                                   [1.0, 2.0, 4.0], rtol=1e-9)
        pids = {int(r["pid"]) for r in results.values()}
        assert len(pids) == 1 and os.getpid() not in pids
        assert len({int(r["ngspice_pid"]) for r in results.values()}) == 1

        # A failed job is resubmitted (impure submission: it really runs again).
        d = str(tmp_path)
        jobs = [Job("sq", i, {"x": i, "dir": d, "fail_first": 1}) for i in range(2)]
        results, on_result = _collect()
        assert run_jobs(jobs, square_job, scheduler=address, retries=1,
                        on_result=on_result) == []
        assert [float(results[i]["y"]) for i in range(2)] == [0.0, 1.0]
        assert [_attempts(tmp_path, j) for j in jobs] == [2, 2]
    finally:
        cluster.close()


def test_unreachable_scheduler_and_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:9.*scheduler"):
        with make_executor(scheduler="tcp://127.0.0.1:9", connect_timeout_s=0.5):
            pass
    with pytest.raises(ConfigError, match="workers = -1"):
        run_jobs([], square_job, workers=-1, on_result=lambda j, r: None)
    with pytest.raises(ConfigError, match="retries"):
        run_jobs([], square_job, retries=-1, on_result=lambda j, r: None)
    with pytest.raises(ValueError, match="listed twice"):
        run_jobs([Job("a", 0, {}), Job("a", 0, {})], square_job, on_result=lambda j, r: None)
    assert run_jobs([], square_job, on_result=lambda j, r: None) == []
    with pytest.raises(TypeError, match="top-level function"):
        run_jobs([Job("a", 0, {})], lambda job: {}, workers=1, on_result=lambda j, r: None)


def test_importing_the_executor_does_not_import_distributed_or_torch() -> None:
    code = ("import sys, calibration.executor, calibration.worker; "
            "print(sorted(m for m in ('torch', 'distributed', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.strip()
    assert out == "[]"
