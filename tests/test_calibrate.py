"""End to end: `circuitsim calibrate` builds, caches, resumes, locks, validates and plots.

All on the `tiny` preset (8x8 tile, coarse grids): the whole calibration takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import proctree
from calibration.calibrate import calibrate
from calibration.store import SCHEMA_VERSION, FileLock, open_table
from calibration.surfaces import SURFACE_NAMES
from netlists.config import preset
from netlists.errors import ConfigError, TableError

pytestmark = [pytest.mark.spice, pytest.mark.timeout(300)]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=280, **kw)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal")
    res = calibrate(preset("tiny"), preset="tiny", out=out, workers=2, progress=lambda d, t: None)
    assert not res.cache_hit
    return res.path


def test_tiny_calibration_has_every_surface_with_provenance(tiny_table):
    table = open_table(tiny_table)
    assert set(table.surfaces) == set(SURFACE_NAMES)
    attrs = table.attrs
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert len(attrs["content_hash"]) == 64
    assert attrs["spice_runs"] > 0 and attrs["wall_seconds"] > 0
    assert "created_utc" in attrs and "ngspice_version" in attrs
    for name, surface in table.surfaces.items():
        for axis_name, axis in surface.axes.items():
            assert axis.unit, f"{name}/{axis_name} has a unit"
            assert np.asarray(axis.data).ndim == 1
        for ds_name, ds in surface.datasets.items():
            assert ds.unit, f"{name}/{ds_name} has a unit"
            assert np.all(np.isfinite(np.asarray(ds.data, dtype=float))), f"{name}/{ds_name}"
    assert not list(tiny_table.parent.glob("*.parts")), "partial results removed"


def test_second_call_is_a_cache_hit(tiny_table):
    start = time.perf_counter()
    res = calibrate(preset("tiny"), preset="tiny", out=tiny_table.parent, workers=2,
                    progress=lambda d, t: None)
    assert res.cache_hit and res.path == tiny_table
    assert time.perf_counter() - start < 10.0


def test_a_changed_parameter_makes_a_new_calibration(tiny_table):
    hw = preset("tiny").replace(tia={"r_feedback_ohm": 6000.0})
    res = calibrate(hw, preset="tiny", out=tiny_table.parent, surfaces=["tia"], workers=1,
                    progress=lambda d, t: None)
    assert not res.cache_hit and res.path != tiny_table
    assert open_table(res.path).attrs["content_hash"] != open_table(tiny_table).attrs[
        "content_hash"]


def test_cli_json_contract_and_cache_hit(tiny_table):
    proc = _cli("calibrate", "--preset", "tiny", "--out", str(tiny_table.parent), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["path"] == str(tiny_table)
    assert out["cache_hit"] is True
    assert sorted(out["surfaces"]) == sorted(SURFACE_NAMES)
    assert out["spice_runs"] > 0 and out["seconds"] >= 0


def test_report_draws_every_surface(tiny_table, tmp_path):
    proc = _cli("report", "--table", str(tiny_table), "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    plots = json.loads(proc.stdout.strip().splitlines()[-1])["plots"]
    assert len(plots) == len(SURFACE_NAMES)
    for p in plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corrupted_table_is_reported_then_rebuilt_with_force(tiny_table, tmp_path):
    copy = tmp_path / tiny_table.name
    copy.write_bytes(tiny_table.read_bytes()[: tiny_table.stat().st_size // 2])  # truncated
    proc = _cli("calibrate", "--preset", "tiny", "--out", str(tmp_path), "--json")
    assert proc.returncode == 2
    assert "--force" in proc.stderr
    with pytest.raises(TableError):
        open_table(copy)
    proc = _cli("calibrate", "--preset", "tiny", "--out", str(tmp_path), "--force",
                "--surfaces", ",".join(SURFACE_NAMES), "--json")
    assert proc.returncode == 0, proc.stderr
    assert open_table(copy).attrs["content_hash"] == open_table(tiny_table).attrs[
        "content_hash"]


def test_killed_calibration_resumes_and_never_looks_complete(tmp_path):
    cmd = [sys.executable, "-m", "cli", "calibrate", "--preset", "tiny", "--out",
           str(tmp_path), "--workers", "1", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    parts = []
    while time.monotonic() < deadline and proc.poll() is None:
        parts = [p for d in tmp_path.glob("*.parts") for p in d.rglob("*.npz")]
        if len(parts) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the calibration must still be running when it is killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not list(tmp_path.glob("*.h5")), "a killed calibration leaves no table"
    saved = len([p for d in tmp_path.glob("*.parts") for p in d.rglob("*.npz")])
    assert saved >= 2
    done = _cli(*cmd[3:])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    table = open_table(Path(out["path"]))
    assert set(table.surfaces) == set(SURFACE_NAMES)


def _start_calibration(out: Path, **kw) -> tuple[subprocess.Popen, list[int]]:
    """`circuitsim calibrate --preset tiny --workers 2` in a session of its own; returned
    once both workers run their ngspice, with every process below it."""
    proc = subprocess.Popen([sys.executable, "-m", "cli", "calibrate", "--preset",
                             "tiny", "--out", str(out), "--workers", "2", "--json"],
                            start_new_session=True, **kw)
    below = proctree.wait_for_descendants(proc.pid, "_worker.py", 2, timeout_s=60)
    if sum("_worker.py" in proctree.command_line(p) for p in below) < 2:
        proctree.clean_up(proc, below)
        pytest.fail("the calibration's two workers did not start their ngspice")
    return proc, below


def _saved_parts(out: Path) -> list[Path]:
    return [p for d in out.glob("*.parts") for p in d.rglob("*.npz")]


def test_killed_calibration_takes_its_workers_and_their_ngspice_along(tmp_path):
    proc, below = _start_calibration(tmp_path, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    try:
        assert proc.poll() is None, "the calibration must still be running when it is killed"
        assert proctree.kill_parent(proc, below) == {}
    finally:
        proctree.clean_up(proc, below)


def test_interrupted_calibration_stops_its_workers_and_a_rerun_resumes(tmp_path):
    proc, below = _start_calibration(tmp_path, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_saved_parts(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the calibration must still be running when interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole group
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr, "the workers leave Ctrl-C to their parent"
        assert stderr.strip().splitlines()[-1].startswith(
            "circuitsim: interrupted: the ngspice jobs already finished are kept"), stderr
        assert proctree.survivors(below, timeout_s=5) == {}
    finally:
        proctree.clean_up(proc, below)
    assert not list(tmp_path.glob("*.h5")), "an interrupted calibration leaves no table"
    saved = len(_saved_parts(tmp_path))
    assert saved >= 2 and not list(tmp_path.rglob("*.tmp"))
    rerun = _cli("calibrate", "--preset", "tiny", "--out", str(tmp_path), "--workers", "2",
                 "--json")
    assert rerun.returncode == 0, rerun.stderr
    reports = [line for line in rerun.stderr.splitlines() if line.startswith("calibrate: ")]
    assert re.fullmatch(rf"calibrate: {saved}/\d+ jobs, \d+ s", reports[0]), reports
    table = open_table(Path(json.loads(rerun.stdout.strip().splitlines()[-1])["path"]))
    assert set(table.surfaces) == set(SURFACE_NAMES)


def test_two_processes_asking_for_the_same_calibration(tmp_path):
    cmd = [sys.executable, "-m", "cli", "calibrate", "--preset", "tiny", "--out",
           str(tmp_path), "--surfaces", "tia,cell_read", "--workers", "1", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0]["path"] == outs[1]["path"]
    assert sorted(o["cache_hit"] for o in outs) == [False, True], "one built it, one waited"
    open_table(Path(outs[0]["path"]))


def test_a_calibration_waiting_for_the_lock_says_who_builds_it(tiny_table):
    lock = tiny_table.with_name(tiny_table.name + ".lock")
    with FileLock(lock):  # this test process "builds" the calibration meanwhile
        proc = subprocess.Popen([sys.executable, "-m", "cli", "calibrate",
                                 "--preset", "tiny", "--out", str(tiny_table.parent),
                                 "--force", "--json"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stderr is not None
            ready, _, _ = select.select([proc.stderr], [], [], 30)
            assert ready, "the waiting calibration speaks within 30 s"
            assert proc.stderr.readline() == (
                f"calibrate: calibration {tiny_table.stem} is being built by process "
                f"{os.getpid()} (lock {lock}); waiting for it to finish ...\n")
            assert proc.poll() is None, "and goes on waiting"
        finally:
            proctree.clean_up(proc, [])


def test_dask_scheduler_gives_the_same_surfaces(tiny_table, tmp_path):
    import distributed  # a test dependency (pyproject's `test` extra)

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        res = calibrate(preset("tiny"), preset="tiny", out=tmp_path, surfaces=["tia", "adc"],
                        scheduler=cluster.scheduler_address, progress=lambda d, t: None)
    ours = open_table(res.path)
    ref = open_table(tiny_table)
    for name in ("tia", "adc"):
        for ds, arr in ours.surface(name).datasets.items():
            np.testing.assert_allclose(arr.data, ref.surface(name).datasets[ds].data,
                                       rtol=1e-9, atol=0)


def test_bad_requests_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        calibrate(preset("tiny"), preset="huge", out=tmp_path)
    with pytest.raises(ConfigError, match="unknown surface"):
        calibrate(preset("tiny"), preset="tiny", out=tmp_path, surfaces=["nope"])
    with pytest.raises(ConfigError, match="workers"):
        calibrate(preset("tiny"), preset="tiny", out=tmp_path, workers=-1)


def test_table_file_layout_is_self_describing(tiny_table):
    with h5py.File(tiny_table, "r") as f:
        assert f.attrs["complete"]
        for name in SURFACE_NAMES:
            group = f[name]
            assert "axes" in group
            for axis in group["axes"].values():
                assert "unit" in axis.attrs
