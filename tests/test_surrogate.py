"""The surrogate tile (surrogate.tile) against ngspice, against its own exact paths,
and in the ideal-circuit limit.

Most tests read the ``tiny`` preset's calibration (8x8 tile). The surrogate is built in
float64 where a test compares it with a reference, so that the tolerances speak of the
model and not of float32 rounding (~1e-7 relative, ~1e-5 LSB at full scale).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from calibration import irdrop
from calibration.store import Table, open_table
from netlists.config import preset
from netlists.errors import ConfigError, TableError
from surrogate.tile import PreparedTiles, TileSurrogate, effective_conductance
from surrogate.validate import ValidationResult, draw_cases, in_range_rows, validate

pytestmark = pytest.mark.timeout(180)

#: The surfaces the surrogate reads (``TileSurrogate.__init__``): the tile network, the TIA,
#: the front-end and ADC, and the read window (for the read noise).
SURROGATE_SURFACES = ["array", "tia", "adc", "cell_read"]


@pytest.fixture(scope="module")
def table(tiny_calibration) -> Table:
    return open_table(tiny_calibration)


@pytest.fixture(scope="module")
def surrogate(table) -> TileSurrogate:
    return TileSurrogate(table, dtype=torch.float64)


@pytest.fixture(scope="module")
def ideal_table(tmp_path_factory) -> Table:
    """The ``tiny`` preset with no wire or driver resistance, a near-ideal op-amp (gain 1e9,
    1 THz) and a near-ideal front-end switch, calibrated on the surfaces the surrogate reads."""
    from calibration.calibrate import calibrate

    hw = preset("tiny").replace(
        array={"r_wire_row_ohm": 0.0, "r_wire_col_ohm": 0.0, "r_driver_ohm": 0.0},
        tia={"open_loop_gain": 1e9, "gbw_hz": 1e12}, adc={"r_switch_on_ohm": 1.0})
    res = calibrate(hw, preset="tiny", out=tmp_path_factory.mktemp("ideal"), workers=0,
                    surfaces=SURROGATE_SURFACES, progress=lambda done, total: None)
    return open_table(res.path, expected_hash=res.content_hash)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiles(s: TileSurrogate, count: int | None, seed: int) -> torch.Tensor:
    """Conductances drawn uniformly over the read window; the first tile all at the top."""
    lo, hi = s.window_s
    shape = (s.rows, s.cols) if count is None else (count, s.rows, s.cols)
    g = lo + (hi - lo) * torch.rand(shape, generator=_gen(seed), dtype=s.dtype)
    if count is None:
        return g
    g[0] = hi
    return g


def _inputs(s: TileSurrogate, batch: int, seed: int, lead: tuple[int, ...] = ()) -> torch.Tensor:
    """Random inputs; the first read of each batch at full scale, the second all zero."""
    x = torch.randint(0, s.input_levels, lead + (batch, s.rows), generator=_gen(seed))
    x[..., 0, :] = s.input_levels - 1
    x[..., 1, :] = 0
    return x.to(s.dtype)


def _edited(table: Table, *, drop: str | None = None,
            surface_attrs: dict[str, dict] | None = None,
            drop_dataset: tuple[str, str] | None = None) -> Table:
    """``table`` in memory with a surface left out, surface attributes replaced or one
    dataset of a surface removed."""
    surfaces = {k: v for k, v in table.surfaces.items() if k != drop}
    for name, attrs in (surface_attrs or {}).items():
        surfaces[name] = dataclasses.replace(surfaces[name],
                                             attrs={**surfaces[name].attrs, **attrs})
    if drop_dataset is not None:
        name, key = drop_dataset
        data = surfaces[name]
        surfaces[name] = dataclasses.replace(
            data, datasets={k: v for k, v in data.datasets.items() if k != key},
            dims={k: v for k, v in data.dims.items() if k != key})
    return dataclasses.replace(table, surfaces=surfaces)


# ---- against ngspice --------------------------------------------------------------------------

@pytest.mark.spice
def test_surrogate_matches_whole_tile_ngspice_solves(table):
    result = validate(table, cases=4, seed=11, workers=2)
    summary = result.summary()
    assert summary["cases"] == 4 and result.spice_v.shape == (4, 8)
    # Measured on this table: rms ~0.0006 LSB, max ~0.0012 LSB (the linear network's fit to
    # the array surface and the TIA's settling fit). The bounds leave a margin of ~30x rms and
    # ~80x max so that a change of draw or of ngspice version does not flip them, while
    # still failing a model that misses one stage (the ideal crossbar's rms is ~0.2 LSB).
    assert summary["rms_lsb"] < 0.02
    assert summary["max_lsb"] < 0.1
    # A code differs only where D lies within max_lsb of a transition level.
    assert summary["code_match"] >= 0.95
    # The surrogate must beat the ideal crossbar by an order of magnitude (measured: ~300x).
    assert summary["ideal_over_surrogate_rms"] >= 10
    assert {"top-full-scale", "floor"} <= set(summary["by_kind"])
    assert summary["surrogate_seconds_per_vmm"] > 0 and summary["spice_seconds_per_vmm"] > 0


def test_validation_draws_sparse_inputs_where_full_rows_would_saturate():
    hw = preset("paper-sim")
    level_g = hw.levels.conductances((4.47e-6, 41.6e-6))
    k = in_range_rows(hw, level_g)
    # 70 uA full scale through 1 kohm; a row of mean level (22 uS) at mean input gives
    # 1000 * 0.1 * 22e-6 * 127.5 / 256 V: 32 rows bring the mean column to half the scale
    assert k == 32
    assert in_range_rows(preset("chip"), level_g) > 64   # chip: every row stays in range
    cases = draw_cases(256, 4, 9, seed=1, levels=16, in_range_rows=k)
    kinds = [c.kind for c in cases]
    assert kinds[:8:2] == ["top-full-scale", "floor", "top", "half-top-full-scale"]
    assert kinds[1::2] == ["random-in-range"] * 4 and kinds[8] == "random"
    for c in cases:
        active = int(np.count_nonzero(c.x))
        assert active <= k if c.kind == "random-in-range" else active > k
    dense = draw_cases(64, 4, 9, seed=1, levels=16, in_range_rows=200)
    assert [c.kind for c in dense] == [c.kind for c in draw_cases(64, 4, 9, seed=1, levels=16)]


def test_validation_summary_compares_d_unclipped_and_as_the_converter_sees_it():
    lsb, fs = 0.01, 2.56
    spice = np.array([[1.0, 3.0], [2.0, 5.0]])
    sur = spice + np.array([[0.02, 0.05], [-0.01, 0.3]])   # errors 2, 5, -1, 30 LSB
    case = draw_cases(2, 2, 2, seed=0, levels=4)
    result = ValidationResult(
        cases=case, level_g=np.ones(4), spice_v=spice, spice_codes=np.zeros((2, 2)),
        surrogate_v=sur, surrogate_codes=np.zeros((2, 2)), ideal_v=spice * 1.1, lsb_v=lsb,
        full_scale_v=fs, spice_seconds=np.ones(2), surrogate_seconds_per_vmm=1e-6,
        prepare_seconds_per_tile=1e-4, linear=np.array([True, False]))
    summary = result.summary()
    assert summary["max_lsb"] == pytest.approx(30)
    # past the full scale both saturate: only the in-range columns' errors remain
    assert summary["clipped_max_lsb"] == pytest.approx(2)
    assert summary["clipped_rms_lsb"] == pytest.approx(np.sqrt((4 + 1) / 4))
    assert summary["saturated"] == 0.5
    kind = summary["by_kind"]["top-full-scale"]
    assert kind["saturated"] == 0.5 and kind["clipped_max_lsb"] == pytest.approx(2)
    # which path each kind of case took: the shortcut for the first, the exact one after
    assert kind["shortcut"] == 1.0 and summary["by_kind"]["random"]["shortcut"] == 0.0
    assert summary["shortcut_cases"] == 0.5


@pytest.mark.spice
def test_validate_command_line_contract(tiny_calibration, tmp_path):
    plot = tmp_path / "validate.png"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "validate", "--table", str(tiny_calibration),
         "--cases", "2", "--json", "--plot", str(plot)],
        check=False, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("cases", "rms_lsb", "p99_lsb", "max_lsb", "code_match", "ideal_rms_lsb",
                "spice_seconds_per_vmm", "surrogate_seconds_per_vmm"):
        assert key in out, key
    assert out["cases"] == 2 and (out["rows"], out["cols"]) == (8, 8)
    assert out["rms_lsb"] < 0.02 and 0.0 <= out["code_match"] <= 1.0
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.spice
def test_validate_reports_columns_past_the_full_scale(tmp_path):
    # a converter of 10 uA full scale on the 8-row tile: every cell on top at full-scale
    # inputs carries 33 uA, and random inputs on every row would average past half of it
    toml = tmp_path / "narrow-adc.toml"
    toml.write_text("[adc]\nv_full_scale_v = 0.05\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "validate", "--preset", "tiny", "--config", str(toml),
         "--cases", "4", "--json"], check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CIRCUITSIM_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    kinds = out["by_kind"]
    assert set(kinds) == {"top-full-scale", "floor", "random-in-range"}
    assert kinds["top-full-scale"]["saturated"] == 1.0 and kinds["floor"]["saturated"] == 0.0
    assert 0 < out["saturated"] < 1
    # clipping can only shrink an error, and both sides clip alike past the full scale
    assert out["clipped_max_lsb"] <= out["max_lsb"] + 1e-12
    assert kinds["top-full-scale"]["clipped_max_lsb"] == 0.0
    assert out["max_lsb"] < 0.1 and all(k["shortcut"] == 1.0 for k in kinds.values())
    assert "past the ADC's full scale" in proc.stderr


# ---- the ideal-circuit limit -------------------------------------------------------------------

@pytest.mark.spice
def test_ideal_circuit_reduces_to_an_exact_matmul(ideal_table):
    s = TileSurrogate(ideal_table, dtype=torch.float64)
    # No wires and a virtual ground off by R_f / (1 + A) = 5 nohm: the fitted coefficients
    # come out ~1e-5 ohm (the fit's noise floor), against 20 ohm of driver on the tiny preset.
    assert np.all(np.abs(s.coefficients) < 1e-3), s.coefficients
    assert s.tia_settling["alpha"] == pytest.approx(1.0, abs=1e-6)
    g = _tiles(s, 4, seed=1)
    tiles = s.prepare(g)
    assert tiles.all_linear
    # W = g to the coefficients' 1e-5 ohm: 1e-5 ohm x 8 x 42 uS ~ 4e-9 relative.
    torch.testing.assert_close(tiles.w, g, rtol=1e-6, atol=0.0)
    x = _inputs(s, 64, seed=2, lead=(4,))
    d = s.analog(x, tiles)
    ideal = s.ideal_analog(x, g)
    # Measured 0.011 LSB: the charge-sharing front-end's bit weights are off 2^(k-8) by up
    # to 1 % (on the LSB plane, whose contribution is small), solved in ngspice.
    assert float(torch.max(torch.abs(d - ideal))) / s.lsb_v < 0.02
    k = np.arange(s.hw.drive.input_bits)
    np.testing.assert_allclose(s.plane_weights, 2.0 ** (k - 8), rtol=0.015)


# ---- effective conductance: torch against numpy ----------------------------------------------

#: Effective resistances (ohm) large enough that W departs from g by several percent.
COEFFS = (40.0, 6.0, 5.0, 12.0)


def _random_g(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(4e-6, 42e-6, size=shape)


@pytest.mark.parametrize("method", ["exact", "fast"])
@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (12, 5), (3, 12, 5)],
                         ids=["square", "wide", "tall-reciprocity", "batched-tall"])
def test_torch_effective_conductance_equals_numpy(method, shape):
    g = _random_g(shape, seed=sum(shape))
    want = irdrop.effective_conductance(g, COEFFS, iterations=8, method=method)
    got = effective_conductance(torch.as_tensor(g), COEFFS, iterations=8, method=method)
    assert got.dtype == torch.float64 and tuple(got.shape) == shape
    # The same sums (the fast method's as matrix products), both float64: equal to rounding.
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0.0)
    assert np.max(np.abs(want / g - 1)) > 0.01, "the network must matter in this test"
    got32 = effective_conductance(torch.as_tensor(g, dtype=torch.float32), COEFFS,
                                  iterations=8, method=method)
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=0.0)


def test_reciprocity_path_solves_the_same_network():
    """With fewer columns than rows the exact W comes from drives at the TIA ends; converged,
    it must give the column currents of the row-driven network for any row voltages."""
    g = _random_g((12, 5), seed=3)
    w = effective_conductance(torch.as_tensor(g), COEFFS, iterations=200).numpy()
    v = np.random.default_rng(4).uniform(0.0, 0.1, size=(6, 12))
    want = irdrop.column_currents(g, v, COEFFS, iterations=200)
    np.testing.assert_allclose(v @ w, want, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_zero_coefficients_give_the_conductances_exactly(method):
    for shape in ((8, 8), (12, 5)):
        g = torch.as_tensor(_random_g(shape, seed=5))
        w = effective_conductance(g, (0.0, 0.0, 0.0, 0.0), iterations=6, method=method)
        assert torch.equal(w, g)


def test_effective_conductance_refuses_bad_arguments():
    g = torch.as_tensor(_random_g((4, 4), seed=6))
    with pytest.raises(ConfigError, match="4 values"):
        effective_conductance(g, (1.0, 2.0, 3.0), iterations=4)
    with pytest.raises(ConfigError, match="method"):
        effective_conductance(g, COEFFS, iterations=4, method="slow")
    with pytest.raises(ConfigError, match="rows, cols"):
        effective_conductance(g[0], COEFFS, iterations=4)


# ---- the shortcut against the exact per-plane path ---------------------------------------------

def test_exact_path_equals_the_shortcut_where_the_tias_stay_linear(surrogate):
    g = _tiles(surrogate, None, seed=7)
    tiles = surrogate.prepare(g)
    assert tiles.all_linear
    exact = dataclasses.replace(tiles, linear=torch.zeros_like(tiles.linear))
    x = _inputs(surrogate, 128, seed=8)
    fast, slow = surrogate.analog(x, tiles), surrogate.analog(x, exact)
    # In the linear range the TIA's DC curve is its fitted line (the table's own residual
    # and the interpolation between its points: ~4e-6 LSB): the two paths agree far below
    # any code decision.
    assert fast.shape == slow.shape == (128, surrogate.cols)
    assert float(torch.max(torch.abs(fast - slow))) / surrogate.lsb_v < 1e-3


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["shared", "per-tile", "extra-lead"])
def test_exact_path_broadcasts_inputs_like_the_shortcut(surrogate, lead):
    """Inputs (..., B, N) broadcast against tiles (T, N, M) on both paths, whatever B and T."""
    g = _tiles(surrogate, 3, seed=9)
    tiles = surrogate.prepare(g)
    exact = dataclasses.replace(tiles, linear=torch.zeros_like(tiles.linear))
    for batch in (5, 3):
        x = _inputs(surrogate, batch, seed=10 + batch, lead=lead)
        fast = surrogate.analog(x, tiles)
        assert fast.shape == lead[:-1] + (3, batch, surrogate.cols)
        slow = surrogate.analog(x, exact)
        assert slow.shape == fast.shape
        assert float(torch.max(torch.abs(fast - slow))) / surrogate.lsb_v < 1e-3


def test_a_tile_that_saturates_takes_the_exact_path_and_stays_on_the_rails(table):
    s = TileSurrogate(table, rows=512, dtype=torch.float64)
    top_g = s.window_s[1]
    tiles = s.prepare(torch.full((512, s.cols), top_g, dtype=torch.float64))
    assert not tiles.all_linear
    x = torch.zeros((4, 512), dtype=torch.float64)
    x[0] = 255                                     # every row at full scale: on the rail
    x[2, 0] = 255                                  # one row: a small current, linear
    x[3] = torch.randint(0, 256, (512,), generator=_gen(12)).double()
    read = s.read(x, tiles)
    a = s.plane_weights
    assert np.all(a > 0)
    rail = max(abs(s.hw.tia.v_rail_low_v), abs(s.hw.tia.v_rail_high_v))
    assert float(read.analog_v.max()) <= a.sum() * rail + s.d_offset_v + 1e-9
    assert float(read.analog_v.min()) >= -a.sum() * rail + s.d_offset_v - 1e-9
    top = 2 ** s.hw.adc.bits - 1
    assert torch.all(read.codes[0] == top) and torch.all(read.codes[3] == top)
    assert torch.all(read.codes[1] == 0)
    # The shortcut's formula (lut[x] @ G v_read W + offset) is exact for reads that stay in
    # the linear range, and far off for the ones that reach the rail.
    shortcut = torch.matmul(s.lut[x.long()], tiles.w_scaled) + tiles.offset_v
    err = torch.abs(read.analog_v - shortcut) / s.lsb_v
    assert float(err[1:3].max()) < 1e-3
    assert float(err[0].min()) > 100


# ---- noise --------------------------------------------------------------------------------------

def test_noise_is_reproducible_from_the_generator(surrogate):
    tiles = surrogate.prepare(_tiles(surrogate, None, seed=13))
    x = _inputs(surrogate, 32, seed=14)
    quiet = surrogate.analog(x, tiles)
    assert torch.equal(quiet, surrogate.analog(x, tiles)), "no generator: deterministic"
    one = surrogate.read(x, tiles, generator=_gen(1))
    again = surrogate.read(x, tiles, generator=_gen(1))
    other = surrogate.read(x, tiles, generator=_gen(2))
    assert torch.equal(one.analog_v, again.analog_v) and torch.equal(one.codes, again.codes)
    assert not torch.equal(one.analog_v, other.analog_v)
    assert not torch.equal(one.analog_v[2:], quiet[2:]), "noise is drawn"
    assert torch.equal(quiet[1], one.analog_v[1]), "no bit set, no read noise (no ADC noise)"
    off = surrogate.analog(x, tiles, generator=_gen(1), read_noise=False, adc_noise=False)
    assert torch.equal(off, quiet)


def _read_noise_sigma_v(table: Table, s: TileSurrogate, x: np.ndarray) -> float:
    """The module docstring's formula, from the table and the configuration:
    ``G v_read sigma_g sqrt(sum_i sum_k a_k^2 bit_k(x_i))``."""
    hw = table.hardware()
    window = table.read_window()
    sigma_g = 0.02 * (window[1] - window[0])  # SurrogateConfig's default
    gain = hw.tia.r_feedback_ohm * hw.tia.open_loop_gain / (1 + hw.tia.open_loop_gain)
    bits = (x.astype(np.int64)[:, None] >> np.arange(hw.drive.input_bits)) & 1
    return gain * hw.drive.v_read_v * sigma_g * float(np.sqrt(np.sum(bits * s.plane_weights ** 2)))


def test_noise_has_the_documented_spread(table, surrogate):
    draws = 4096
    tiles = surrogate.prepare(_tiles(surrogate, None, seed=15))
    x = torch.randint(0, 256, (surrogate.rows,), generator=_gen(16)).double()
    xs = x.expand(draws, -1)
    quiet = surrogate.analog(xs, tiles)
    sigma = _read_noise_sigma_v(table, surrogate, x.numpy())
    assert sigma > 0
    noise = surrogate.analog(xs, tiles, generator=_gen(17)) - quiet
    # 4096 draws x 8 columns: the sample std's standard error is 1 / sqrt(2 n) = 0.4 %, so
    # 3 % is ~8 standard errors (and far below what a wrong factor in the formula gives).
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(noise.mean())) < 4 * sigma / np.sqrt(noise.numel())
    # ADC noise (the table's noise_v_rms; 0 on tiny, so set here) adds in quadrature.
    adc = 0.5 * surrogate.lsb_v
    noisy = TileSurrogate(_edited(table, surface_attrs={"adc": {"noise_v_rms": adc}}),
                          dtype=torch.float64)
    both = noisy.analog(xs, tiles, generator=_gen(18)) - quiet
    assert float(both.std()) == pytest.approx(np.hypot(sigma, adc), rel=0.03)
    only = noisy.analog(xs, tiles, generator=_gen(19), read_noise=False) - quiet
    assert float(only.std()) == pytest.approx(adc, rel=0.03)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_column_read_is_the_read_transposed(table, dtype):
    """``analog_columns`` takes the vectors along the last axis, with tile columns stacked
    along M; noise-free it is ``analog`` transposed, and ``codes_columns`` its codes."""
    s = TileSurrogate(table, dtype=dtype)
    tiles = s.prepare(_tiles(s, 3, seed=21))                       # (3, N, M)
    x = _inputs(s, 40, seed=22, lead=(3,))                         # (3, B, N)
    weights, offset = tiles.columns()
    assert weights.shape == (3, s.cols + 1, s.rows) and offset.shape == (3, s.cols, 2)
    want = s.analog(x, tiles)                                      # (3, B, M)
    got = s.analog_columns(x.transpose(1, 2), weights, offset)    # (3, M, B)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got.transpose(1, 2), want, rtol=tol, atol=tol * s.lsb_v)
    codes = s.codes_columns(x.transpose(1, 2), weights, offset)
    assert codes.dtype == dtype
    # equal but where D lies within rounding of a transition level
    assert int((codes.transpose(1, 2) != s.quantize(want, dtype=dtype)).sum()) <= 2
    # tiles 0 and 1 sharing the inputs of tile 0, stacked along M
    pair = PreparedTiles(*(getattr(tiles, f.name)[:2] for f in dataclasses.fields(tiles)))
    stacked = torch.cat([weights[0, :-1], weights[1]])
    both = s.analog_columns(x[0].T, stacked, torch.cat([offset[0], offset[1]]))
    each = s.analog(x[0].expand(2, -1, -1), pair)                    # (2, B, M)
    assert torch.allclose(both, torch.cat([each[0].T, each[1].T]), rtol=tol,
                          atol=tol * s.lsb_v)
    with pytest.raises(ConfigError):
        s.analog_columns(torch.full((s.rows, 2), 256.0, dtype=dtype), weights[0], offset[0])


def test_the_column_read_draws_the_documented_noise(table, surrogate):
    draws = 4096
    tiles = surrogate.prepare(_tiles(surrogate, None, seed=23))
    x = torch.randint(0, 256, (surrogate.rows,), generator=_gen(24)).double()
    xt = x[:, None].expand(-1, draws)
    weights, offset = tiles.columns()
    quiet = surrogate.analog_columns(xt, weights, offset)
    noise = surrogate.analog_columns(xt, weights, offset, generator=_gen(25)) - quiet
    sigma = _read_noise_sigma_v(table, surrogate, x.numpy())
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)
    again = surrogate.analog_columns(xt, weights, offset, generator=_gen(25)) - quiet
    assert torch.equal(noise, again)
    # the codes come from the same draws
    codes = surrogate.codes_columns(xt, weights, offset, generator=_gen(25))
    assert int((codes != surrogate.quantize(quiet + noise, dtype=codes.dtype)).sum()) <= 2


# ---- bad input -----------------------------------------------------------------------------

def test_a_missing_table_says_how_to_make_one(tmp_path):
    with pytest.raises(TableError, match="circuitsim calibrate"):
        open_table(tmp_path / "nowhere.h5")


@pytest.mark.spice
def test_a_table_without_the_surfaces_it_needs_is_refused(table, tmp_path):
    from calibration.calibrate import calibrate

    res = calibrate(preset("tiny"), preset="tiny", out=tmp_path, workers=0, surfaces=["tia"],
                    progress=lambda done, total: None)
    with pytest.raises(TableError, match="no surface 'array'.*\\['tia'\\]"):
        TileSurrogate(open_table(res.path))
    for name in SURROGATE_SURFACES:
        with pytest.raises(TableError, match=f"no surface '{name}'"):
            TileSurrogate(_edited(table, drop=name))
    with pytest.raises(TableError, match="coefficients_ohm.*recalibrate"):
        TileSurrogate(_edited(table, drop_dataset=("array", "coefficients_ohm")))


@pytest.mark.parametrize("bad", [-1.0, 256.0, 3.5, float("nan")])
def test_inputs_out_of_range_are_refused(surrogate, bad):
    tiles = surrogate.prepare(_tiles(surrogate, None, seed=20))
    x = _inputs(surrogate, 4, seed=21)
    x[3, 5] = bad
    with pytest.raises(ConfigError, match="whole numbers in \\[0, 255\\]"):
        surrogate.read(x, tiles)


def test_bad_conductance_maps_and_settings_are_refused(table, surrogate):
    g = _tiles(surrogate, None, seed=22)
    for shape in ((7, 8), (8, 9), (8,)):
        with pytest.raises(ConfigError, match="the tile is 8 x 8"):
            surrogate.prepare(torch.zeros(shape, dtype=torch.float64))
    for value in (-1e-6, float("nan"), float("inf")):
        bad = g.clone()
        bad[2, 3] = value
        with pytest.raises(ConfigError, match="finite and non-negative"):
            surrogate.prepare(bad)
    with pytest.raises(ConfigError, match="method"):
        TileSurrogate(table, method="slow")


@pytest.mark.parametrize("cases", ["0", "-1", "two"])
def test_validate_command_line_refuses_a_bad_case_count(tiny_calibration, cases):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "validate", "--table", str(tiny_calibration),
         "--cases", cases, "--json"], check=False, capture_output=True, text=True, timeout=120)
    # A usage error: refused before any table is read or ngspice started.
    assert proc.returncode == 2
    assert "usage error" in proc.stderr and "argument --cases" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["option"] == "--cases"


@pytest.fixture(scope="module")
def slow_table(tmp_path_factory) -> Table:
    """The ``tiny`` preset with a slow op-amp (50 MHz): its TIAs settle visibly less on
    strongly conducting columns."""
    from calibration.calibrate import calibrate

    hw = preset("tiny").replace(tia={"gbw_hz": 5e7})
    res = calibrate(hw, preset="tiny", out=tmp_path_factory.mktemp("slow"), workers=0,
                    surfaces=SURROGATE_SURFACES, progress=lambda done, total: None)
    return open_table(res.path, expected_hash=res.content_hash)


def test_settling_follows_each_columns_conductance(slow_table):
    """A column's plane weights come from its own load: the more its cells conduct, the
    less its TIA has settled; the shortcut's settling components reproduce the per-column
    weights that the exact per-plane path applies, and the rank grows only as needed."""
    s = TileSurrogate(slow_table, dtype=torch.float64)
    tia = slow_table.surface("tia")
    fractions = np.asarray(tia.datasets["settled_fraction_load"].data)
    assert fractions[0] > fractions[-1] + 0.01, "the slow TIA settles less on heavy loads"
    lo, hi = s.window_s
    g = torch.full((s.rows, s.cols), lo, dtype=torch.float64)
    g[:, s.cols // 2:] = hi                                   # light and heavy columns
    tiles = s.prepare(g)
    total = tiles.plane_weights.sum(-1)
    assert float(total[-1]) < float(total[0]) - 1e-3
    assert tiles.rank >= 1 and tiles.all_linear
    x = _inputs(s, 64, seed=31)
    shortcut = s.analog(x, tiles)
    exact = s.analog(x, dataclasses.replace(tiles, linear=torch.zeros_like(tiles.linear)))
    lsb = s.lsb_v
    bound = 0.02 * lsb if tiles.rank < len(s.plane_weights) else 1e-9
    # the exact path reads the TIA's DC transfer from its table: 1e-6 V is 3e-4 LSB
    assert float((shortcut - exact).abs().max()) <= bound + 1e-6
    full = s.prepare(g, rank=len(s.plane_weights))
    np.testing.assert_allclose(s.analog(x, full).numpy(), exact.numpy(), atol=1e-6)
    weights, offset = full.columns()
    np.testing.assert_allclose(s.analog_columns(x.T, weights, offset).T.numpy(),
                               s.analog(x, full).numpy(), atol=1e-12)
    with pytest.raises(ConfigError, match="rank"):
        full.put(torch.tensor([True]), s.prepare(g[None], rank=1)) if full.rank > 1 \
            else s.prepare(g, rank=0)


def test_the_first_settling_component_is_the_lightest_loads(slow_table):
    """The settling basis starts with the plane weights of the lightest calibrated load, so
    that lightly loaded tiles (trained weights: most devices near their floor) read on one
    component; ``with_rank`` gives what ``prepare`` gives at that rank, and
    ``settling_rank`` what ``prepare`` chooses."""
    s = TileSurrogate(slow_table, dtype=torch.float64)
    basis = s._basis
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(basis.shape[0]), atol=1e-12)
    first = s._a_load[0] / s._a_load[0].norm()
    np.testing.assert_allclose(basis[0].numpy(), first.numpy(), atol=1e-12)
    lo, hi = s.window_s
    light = torch.full((s.rows, s.cols), lo, dtype=torch.float64)
    heavy = light.clone()
    heavy[:, s.cols // 2:] = hi
    x = _inputs(s, 32, seed=5)
    for g in (light, heavy):
        tiles = s.prepare(g)
        assert s.settling_rank(tiles) == tiles.rank
        full = s.with_rank(tiles, len(basis))
        assert float((s.analog(x, tiles) - s.analog(x, full)).abs().max()) <= 0.02 * s.lsb_v
        for rank in (1, 2, 3):
            want = s.prepare(g, rank=rank)
            got = s.with_rank(tiles, want.rank)
            for f in dataclasses.fields(want):
                np.testing.assert_allclose(getattr(got, f.name).numpy(),
                                           getattr(want, f.name).numpy(), rtol=1e-12,
                                           atol=0, err_msg=f.name)
    assert s.prepare(light).rank == 1
    assert s.prepare(heavy).rank > 1
    # without the bound: the rank asked for, and settling_rank still says what is needed
    unbound = s.prepare(heavy, bound=False)
    assert unbound.rank == 1 and s.settling_rank(unbound) == s.prepare(heavy).rank
    assert s.prepare(light, rank=2, bound=False).rank == 2
    with pytest.raises(ConfigError, match="rank"):
        s.with_rank(s.prepare(light), 0)


def test_a_layer_reads_on_more_components_once_a_write_needs_them(slow_table):
    """Writing a tile heavy enough to need more settling components raises the whole
    layer's rank in place: the layer then reads as if prepared afresh, and the tiles not
    written keep their network solve."""
    from tests.conftest import TEST_TABLE
    from training.analog import AnalogChip, AnalogLinear

    # the shipped tiny chip (its programming surfaces), read through the slow op-amp's
    # surrogate (the same tile but for the TIA's bandwidth)
    chip = AnalogChip(open_table(TEST_TABLE), seed=2, read_noise=False)
    chip.reader = TileSurrogate(slow_table, method="fast")
    torch.manual_seed(4)
    rows = chip.rows
    layer = AnalogLinear(2 * rows, chip.cols // 2, chip=chip).tiles
    with torch.no_grad():                                    # every device on its floor
        layer.state.copy_(chip.programmer.floor_state(layer.devices()))
        layer.target_level.zero_()
    layer._forget_tiles()
    layer.analog(torch.rand(8, 2 * rows))
    light = layer._prepared.rank
    before = layer._prepared.w.clone()
    w = layer.weight.detach().clone()
    w[:, :rows] = float(layer.w_max)                        # tile row 0: every device on top
    pairs = torch.zeros_like(w, dtype=torch.bool)
    pairs[:, :rows] = True
    assert layer.program(w, pairs=pairs).devices > 0
    fresh = chip.reader.prepare(layer.conductances())
    kept = layer._prepared
    assert kept.rank == fresh.rank > light
    for f in dataclasses.fields(fresh):
        torch.testing.assert_close(getattr(kept, f.name), getattr(fresh, f.name), rtol=1e-6,
                                   atol=0, msg=f.name)
    assert torch.equal(kept.w[1], before[1])
    assert not torch.equal(kept.w[0], before[0])
