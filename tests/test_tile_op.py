"""The tile's DC operating-point deck (one settled bit-plane) against the bit-serial transient."""

from __future__ import annotations

import numpy as np
import pytest

from netlists.array import bit_planes, render_tile_op_deck
from netlists.config import preset
from netlists.errors import ConfigError
from circuitsim.tile import solve_tile

pytestmark = pytest.mark.spice


def _tile(rows: int, cols: int, seed: int = 0):
    hw = preset("chip").replace(array={"rows": rows, "cols": cols})
    rng = np.random.default_rng(seed)
    states = rng.uniform(hw.device.n_min, hw.device.n_max, (rows, cols))
    x = rng.integers(0, 2 ** hw.drive.input_bits, rows)
    return hw, states, x


def test_operating_point_equals_the_settled_transient(runner):
    hw, states, x = _tile(8, 6)
    tran = solve_tile(hw, states, x, runner=runner)
    planes = bit_planes(x, hw.drive.input_bits)
    for k in range(hw.drive.input_bits):
        res = runner.run(render_tile_op_deck(hw, states, planes[k] * hw.drive.v_read_v),
                         name="tile_op")
        out = np.array([res[f"v(tout{j})"][0] for j in range(hw.array.cols)])
        # The TIA settles within the bit period: sampled transient = operating point to
        # well under 1% of an ADC LSB (3.9 mV).
        np.testing.assert_allclose(out, tran.tia_out_v[k], atol=2e-5)
    assert res.attempts == 1


def test_operating_point_of_a_chip_tile_converges_without_aids(runner):
    hw, states, x = _tile(64, 64, seed=1)
    res = runner.run(render_tile_op_deck(hw, states, np.full(64, hw.drive.v_read_v)),
                     name="tile_op_64")
    assert res.attempts == 1
    out = np.array([res[f"v(tout{j})"][0] for j in range(64)])
    assert np.all(out < 0) and np.all(out > hw.tia.v_rail_low_v)
    vg = np.array([res[f"v(tin{j})"][0] for j in range(64)])
    # Virtual-ground error = v(out) / A (+ offset): about 0.1 mV, not zero.
    np.testing.assert_allclose(vg, -out / hw.tia.open_loop_gain, rtol=0.05)


@pytest.mark.parametrize("row_v, match", [
    (np.zeros(5), "shape"),
    (np.full(8, 9.0), "within"),
    (np.full(8, np.nan), "finite"),
])
def test_bad_row_voltages_are_rejected(row_v, match):
    hw, states, _ = _tile(8, 8)
    with pytest.raises(ConfigError, match=match):
        render_tile_op_deck(hw, states, row_v)
