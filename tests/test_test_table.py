"""The calibration table the torch tests read (tests/data/tiny.h5) is what ngspice gives now."""

from __future__ import annotations

import pytest

from calibration.calibrate import calibration_key
from calibration.store import open_table
from conftest import TEST_TABLE
from netlists.config import preset


@pytest.mark.spice
def test_the_shipped_test_table_is_current():
    """Its content hash covers the hardware, grids, netlist texts, solver steps and ngspice
    version: any change to those makes this fail until the table is rebuilt."""
    have = open_table(TEST_TABLE).attrs["content_hash"]
    want = calibration_key(preset("tiny"), preset="tiny")
    assert have == want, ("tests/data/tiny.h5 is stale (netlists, grids or ngspice changed): "
                          "rebuild it with `.venv/bin/python scripts/make_test_table.py`")
