"""calibration.store: content hash, HDF5 tables, partial results, lock (no ngspice needed)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from calibration import store
from calibration.base import Array, SurfaceData
from calibration.store import (
    SCHEMA_VERSION,
    FileLock,
    PartialResults,
    content_hash,
    default_cache_dir,
    open_table,
    write_table,
)
from netlists.config import SolverConfig, preset
from netlists import files
from netlists.errors import TableError

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]

# A value that stands out in the file's bytes, so a test can find and flip it.
MARKER = 1234.5678901234


def _surface() -> SurfaceData:
    g = np.linspace(4.0, 40.0, 5)
    v = np.array([0.05, 0.1, 0.2])
    current = np.outer(g * 1e-6, v)[..., None] * np.array([1.0, 1.01])
    current[0, 0, 0] = MARKER
    return SurfaceData(
        axes={"g_us": Array(g, "uS", "programmed conductance"),
              "v_read": Array(v, "V", "read voltage")},
        datasets={"i_a": Array(current, "A", "cell current; last dim: two repeats"),
                  "ok": Array(np.array([True, True, False, True, True]), "1"),
                  "offset_v": Array(np.array(0.003), "V", "a scalar")},
        dims={"i_a": ("g_us", "v_read"), "ok": ("g_us",), "offset_v": ()},
        attrs={"representation": "grid", "levels": 128, "seeds": [1, 2], "note": None})


def _write(path: Path, **attrs: object) -> None:
    write_table(path, surfaces={"cell_read": _surface()},
                attrs={"content_hash": "abc123", "created_utc": "2024-01-01T00:00:00Z",
                       "wall_seconds": 1.25, "spice_runs": 15, **attrs})


# --------------------------------------------------------------------------------------
# content hash and cache directory
# --------------------------------------------------------------------------------------

def test_content_hash_is_stable_across_processes() -> None:
    obj = {"hw": preset("tiny").to_dict(), "solver": SolverConfig(), "grid": (1, 2.5),
           "arr": np.arange(4.0), "path": Path("/x/y"), "n": np.int64(3), "f": np.float32(0.1)}
    code = ("import numpy as np; from pathlib import Path; from calibration.store import "
            "content_hash; from netlists.config import SolverConfig, preset; "
            "print(content_hash({'f': np.float32(0.1), 'n': np.int64(3), 'path': Path('/x/y'), "
            "'arr': np.arange(4.0), 'grid': (1, 2.5), 'solver': SolverConfig(), "
            "'hw': preset('tiny').to_dict()}))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env, cwd=REPO).stdout.strip()
    assert other == content_hash(obj)
    assert len(other) == 64


def test_content_hash_is_sensitive_to_every_change() -> None:
    base = {"hw": preset("tiny").to_dict(), "grid": [1.0, 2.0], "arr": np.zeros(3)}
    h = content_hash(base)
    changed_hw = preset("tiny")
    changed_hw = dataclasses.replace(
        changed_hw, array=dataclasses.replace(changed_hw.array, r_wire_row_ohm=2.6))
    variants = [
        {**base, "hw": changed_hw.to_dict()},
        {**base, "grid": [1.0, 2.0000000000000004]},   # one ulp
        {**base, "grid": [1, 2]},                       # int vs float
        {**base, "arr": np.zeros(3, dtype=np.float32)},  # dtype
        {**base, "arr": np.zeros((3, 1))},              # shape
        {**base, "extra": None},
    ]
    assert len({h, *map(content_hash, variants)}) == len(variants) + 1
    # Key order and tuple-vs-list spelling do not matter.
    assert content_hash(dict(reversed(list(base.items())))) == h
    assert content_hash({**base, "grid": (1.0, 2.0)}) == h
    assert content_hash(np.array(3.0)) != content_hash(np.array([3.0]))
    with pytest.raises(TypeError, match="cannot encode"):
        content_hash({"x": object()})


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CIRCUITSIM_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CIRCUITSIM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "circuitsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "circuitsim"


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------

def test_round_trip_keeps_axes_units_dims_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cal.h5"
    _write(path, flag=True)
    assert [p.name for p in path.parent.iterdir()] == ["cal.h5"]  # no temporary files left
    table = open_table(path, expected_hash="abc123")
    assert table.attrs["schema_version"] == SCHEMA_VERSION
    assert table.attrs["content_hash"] == "abc123"
    assert table.attrs["spice_runs"] == 15 and table.attrs["wall_seconds"] == 1.25
    assert table.attrs["flag"] is True
    original = _surface()
    got = table.surface("cell_read")
    for name, arr in original.axes.items():
        np.testing.assert_array_equal(got.axes[name].data, arr.data)
        assert (got.axes[name].unit, got.axes[name].description) == (arr.unit, arr.description)
    for name, arr in original.datasets.items():
        np.testing.assert_array_equal(got.datasets[name].data, arr.data)
        assert got.datasets[name].data.dtype == arr.data.dtype
        assert got.datasets[name].data.shape == arr.data.shape
        assert got.datasets[name].unit == arr.unit
        assert got.dims[name] == tuple(original.dims[name])
    assert got.attrs == original.attrs
    # The layout is plain HDF5 that any tool can read.
    with h5py.File(path, "r") as f:
        assert f["cell_read/axes/g_us"].attrs["unit"] == "uS"
        assert list(f["cell_read/i_a"].attrs["dims"]) == ["g_us", "v_read"]
        assert bool(f.attrs["complete"])
    with pytest.raises(TableError, match=r"no surface 'tia'.*\['cell_read'\]"):
        table.surface("tia")


def test_write_validates_shapes_and_reserved_names(tmp_path: Path) -> None:
    bad = dataclasses.replace(_surface(), dims={"i_a": ("v_read", "g_us"), "ok": ("g_us",),
                                                "offset_v": ()})
    with pytest.raises(ValueError, match="i_a.*leading shape"):
        write_table(tmp_path / "x.h5", surfaces={"s": bad}, attrs={})
    with pytest.raises(ValueError, match="complete"):
        write_table(tmp_path / "x.h5", surfaces={"s": _surface()}, attrs={"complete": True})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(files, "_fsync_file", crash)  # fails after the data is written
    with pytest.raises(OSError, match="disk full"):
        _write(path, spice_runs=99)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "new.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["cal.h5"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.0])
def test_truncated_file_is_reported(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(TableError, match=r"cal\.h5.*(truncated|corrupted).*--force"):
        open_table(path)


def test_flipped_data_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float64(MARKER).tobytes())
    assert at > 0
    raw[at + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(TableError, match="checksum mismatch.*corrupted.*recalibrate"):
        open_table(path)


def test_edited_attribute_fails_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    with h5py.File(path, "r+") as f:
        f["cell_read/i_a"].attrs["unit"] = "mA"
    with pytest.raises(TableError, match="checksum mismatch"):
        open_table(path)


def test_schema_mismatch_missing_marker_and_wrong_hash(tmp_path: Path) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    with pytest.raises(TableError, match="content hash 'abc123' differs.*'zzz'"):
        open_table(path, expected_hash="zzz")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(TableError, match=f"schema version {SCHEMA_VERSION + 1}.*--force"):
        open_table(path)
    _write(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(TableError, match="incomplete.*interrupted"):
        open_table(path)
    with pytest.raises(TableError, match="no calibration table here"):
        open_table(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(TableError, match="not a readable HDF5 file"):
        open_table(tmp_path / "text.h5")


def test_check_range_refuses_extrapolation(tmp_path: Path) -> None:
    path = tmp_path / "cal.h5"
    _write(path)
    table = open_table(path)
    table.check_range("cell_read", "g_us", [4.0, 20.0, 40.0])
    with pytest.raises(TableError, match=r"cell_read: g_us = 41 uS.*\[4, 40\] uS.*1 of 3"):
        table.check_range("cell_read", "g_us", np.array([5.0, 41.0, 6.0]))
    with pytest.raises(TableError, match="outside"):
        table.check_range("cell_read", "v_read", float("nan"))
    with pytest.raises(TableError, match="no axis 'x'"):
        table.check_range("cell_read", "x", 1.0)


# --------------------------------------------------------------------------------------
# partial results
# --------------------------------------------------------------------------------------

def test_partial_results_save_load_done(tmp_path: Path) -> None:
    parts = PartialResults(tmp_path / "p", key="k1")
    assert parts.done("cell_read") == set()
    point = {"g_us": 4.0, "seed": 3, "pulses": (1, 2)}
    parts.save("cell_read", 2, point, {"i": np.arange(3.0), "n": np.int64(4)})
    parts.save("cell_read", 0, {"g_us": 1.0}, {"i": np.zeros(2)})
    assert parts.done("cell_read") == {0, 2}
    assert parts.done("tia") == set()
    got = parts.load("cell_read", 2, {"pulses": [1, 2], "seed": 3, "g_us": 4.0})
    np.testing.assert_array_equal(got["i"], np.arange(3.0))
    assert int(got["n"]) == 4 and set(got) == {"i", "n"}
    with pytest.raises(TableError, match="computed for point"):
        parts.load("cell_read", 2, {**point, "seed": 4})
    with pytest.raises(TableError, match="no stored result for job 1"):
        parts.load("cell_read", 1, point)
    (tmp_path / "p" / "cell_read" / "0.npz").write_bytes(b"garbage")
    with pytest.raises(TableError, match="unreadable"):
        parts.load("cell_read", 0, {"g_us": 1.0})
    assert not list((tmp_path / "p").rglob("*.tmp"))

    # Same key: kept; another key: stale, cleared.
    assert PartialResults(tmp_path / "p", key="k1").done("cell_read") == {0, 2}
    assert PartialResults(tmp_path / "p", key="k2").done("cell_read") == set()
    parts = PartialResults(tmp_path / "p", key="k2")
    parts.clear()
    assert not (tmp_path / "p").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(TableError, match="not a partial-results directory"):
        PartialResults(foreign, key="k1")
    assert (foreign / "precious.txt").exists()


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pathlib import Path
    from calibration.store import PartialResults
    parts = PartialResults(Path(sys.argv[1]), key="key-a")
    for i in range(3):
        parts.save("tia", i, {"i": i}, {"v": np.full(1000, float(i))})
    print("saved", flush=True)
    time.sleep(60)  # killed here, "mid-run"
""")


def test_killed_calibration_resumes_from_saved_parts(tmp_path: Path) -> None:
    parts_dir = tmp_path / "cal.h5.parts"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(parts_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saved"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    parts = PartialResults(parts_dir, key="key-a")
    assert parts.done("tia") == {0, 1, 2}
    for i in range(3):
        np.testing.assert_array_equal(parts.load("tia", i, {"i": i})["v"], float(i))
    assert not (tmp_path / "cal.h5").exists()
    assert not list(parts_dir.rglob("*.tmp"))


# --------------------------------------------------------------------------------------
# lock
# --------------------------------------------------------------------------------------

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from calibration.store import FileLock
    with FileLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()   # hold until told to release
    print("released", flush=True)
""")


@contextmanager
def _lock_held_elsewhere(lock_path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding ``lock_path`` until a line is written to its stdin."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def _waits_until_released(holder: subprocess.Popen, lock: FileLock, seconds: float) -> None:
    """``lock``, taken in a thread, is not had for ``seconds`` while ``holder`` holds it,
    and is had soon after ``holder`` lets go."""
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with lock:
            acquired.set()

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    assert not acquired.wait(seconds)
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert acquired.wait(10)
    waiter.join()


def test_lock_blocks_a_second_process_and_times_out(tmp_path: Path) -> None:
    lock_path = tmp_path / "locks" / "cal.h5.lock"
    with _lock_held_elsewhere(lock_path) as holder:
        start = time.monotonic()
        with pytest.raises(TableError, match=rf"cal\.h5\.lock.*0\.3 s.*process {holder.pid}"
                                             rf".*another process is writing"):
            with FileLock(lock_path, timeout_s=0.3, poll_s=0.05):
                pass
        assert time.monotonic() - start >= 0.3
        # A second asker waits while the lock is held and gets it once the holder lets go.
        _waits_until_released(holder, FileLock(lock_path, timeout_s=20, poll_s=0.02), 0.3)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "released"


def test_a_waiting_lock_names_its_holder_at_once_then_every_period(tmp_path: Path) -> None:
    reports: list[tuple[int | None, float, float]] = []

    def on_wait(holder: int | None, waited_s: float) -> None:
        reports.append((holder, waited_s, time.monotonic()))

    with FileLock(tmp_path / "free.lock", on_wait=on_wait):
        pass
    assert reports == [], "a free lock is taken without a word"
    lock_path = tmp_path / "cal.h5.lock"
    with _lock_held_elsewhere(lock_path) as holder:  # no timeout: as calibrate() waits
        _waits_until_released(holder, FileLock(lock_path, poll_s=0.02, on_wait=on_wait,
                                               report_every_s=0.2), 0.7)
    assert len(reports) >= 3
    assert {pid for pid, _, _ in reports} == {holder.pid}
    assert reports[0][1] < 0.1, "the first report comes as soon as the lock is found taken"
    gaps = np.diff([at for _, _, at in reports])
    assert np.all(gaps >= 0.2), "then one every report_every_s, not one every poll"
    with pytest.raises(ValueError, match="report_every_s"):
        FileLock(lock_path, report_every_s=0)
    with pytest.raises(TypeError, match="on_wait"):
        FileLock(lock_path, on_wait="print")  # type: ignore[arg-type]


def test_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    lock_path = tmp_path / "cal.h5.lock"
    with _lock_held_elsewhere(lock_path) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with FileLock(lock_path, timeout_s=5):
            pass


def test_importing_the_store_imports_neither_torch_nor_distributed() -> None:
    code = ("import sys, calibration.store; "
            "print(sorted(m for m in ('torch', 'distributed', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.strip()
    assert out == "[]"
