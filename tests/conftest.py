"""Shared fixtures: one ngspice runner for the whole session (its worker is reused), the
``tiny`` calibration, a small MNIST-format folder for training runs."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory):
    """The ``tiny`` preset's calibration (8x8 tile, every surface), built once per session."""
    from calibration.calibrate import calibrate

    out = tmp_path_factory.mktemp("tiny-calibration")
    return calibrate(preset("tiny"), preset="tiny", out=out, workers=2,
                     progress=lambda done, total: None).path


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
