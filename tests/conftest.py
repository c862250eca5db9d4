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
