"""Shared fixtures: one ngspice runner for the whole session (its worker is reused), the
shipped ``tiny`` calibration, a small MNIST-format folder for training runs."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import numpy as np
import pytest

from netlists.config import HardwareConfig, preset


@pytest.fixture(scope="session")
def runner():
    from circuitsim.runner import Runner

    with Runner() as r:
        yield r


@pytest.fixture(scope="session")
def chip() -> HardwareConfig:
    return preset("chip")


#: The ``tiny`` preset's calibration (8x8 tile, every surface), built by ngspice with
#: ``scripts/make_test_table.py``; ``test_test_table.py`` checks that it is current.
TEST_TABLE = Path(__file__).resolve().parent / "data" / "tiny.h5"


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory):
    """A copy of the shipped ``tiny`` calibration, named as ``calibrate`` names it, in a
    folder of its own (tests may write beside it). Needs no ngspice."""
    import shutil

    from calibration.calibrate import calibration_path
    from calibration.store import open_table

    key = open_table(TEST_TABLE).attrs["content_hash"]   # checks its checksum too
    path = calibration_path(tmp_path_factory.mktemp("tiny-calibration"), "tiny", key)
    shutil.copyfile(TEST_TABLE, path)
    return path



def _mount_tmpfs(target, options: str) -> bool:
    """Mount a tmpfs on ``target`` (root only); False where mounting is not permitted."""
    import subprocess

    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


@contextlib.contextmanager
def _tmpfs(folder, options: str):
    """``folder`` with a tmpfs of ``options`` mounted on it for the block; skips the test
    where this run may not mount (not root)."""
    import os
    import subprocess

    folder.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(folder, options):
        pytest.skip(f"a tmpfs ({options}) needs mount rights (root), which this run lacks")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder in which no file can be created, for root too: a read-only tmpfs when
    running as root (permission bits do not stop root), else a folder of mode 0555."""
    import os

    if os.geteuid() == 0:
        with _tmpfs(tmp_path / "read-only", "ro,size=64k") as folder:
            yield folder
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a file system with no space left (a filled 256 kB tmpfs)."""
    with _tmpfs(tmp_path / "full", "size=256k") as folder:
        with open(folder / "filler", "wb", buffering=0) as fh:
            try:
                while fh.write(b"\0" * 65536):
                    pass
            except OSError:
                pass
        yield folder


@pytest.fixture
def small_dir(tmp_path):
    """A folder with room for a few small files but not for a plot (an 8 kB tmpfs)."""
    with _tmpfs(tmp_path / "small", "size=8k") as folder:
        yield folder


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """A small MNIST-format folder: two classes that differ in where the ink is."""
    folder = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 192), ("t10k", 64)):
        labels = rng.integers(0, 2, size=count)
        images = rng.integers(0, 60, size=(count, 28, 28))
        for k, lab in enumerate(labels):
            rows = slice(4, 14) if lab == 0 else slice(14, 24)
            images[k, rows, 6:22] += 180
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder
