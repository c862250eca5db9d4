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
