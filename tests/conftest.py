"""Shared fixtures: one ngspice runner for the whole session (its worker is reused)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory):
    """The ``tiny`` preset's calibration (8x8 tile, every surface), built once per session."""
    from calibration.calibrate import calibrate

    out = tmp_path_factory.mktemp("tiny-calibration")
    return calibrate(preset("tiny"), preset="tiny", out=out, workers=2,
                     progress=lambda done, total: None).path


def _mount_tmpfs(target, options: str) -> bool:
    """Mount a tmpfs on ``target`` (root only); False where mounting is not permitted."""
    import subprocess

    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def _umount(target) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder in which no file can be created, for root too: a read-only tmpfs when
    running as root (permission bits do not stop root), else a folder of mode 0555."""
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "ro,size=64k"):
            pytest.fail("running as root but cannot mount a read-only tmpfs: the file-system "
                        "error tests need either mount rights or a non-root user")
        try:
            yield folder
        finally:
            _umount(folder)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a file system with no space left (a filled 256 kB tmpfs; root only)."""
    import os

    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(folder, "size=256k"):
        pytest.skip("a full file system needs mount rights (root), which this run lacks")
    try:
        with open(folder / "filler", "wb", buffering=0) as fh:
            try:
                while fh.write(b"\0" * 65536):
                    pass
            except OSError:
                pass
        yield folder
    finally:
        _umount(folder)
