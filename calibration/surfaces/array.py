"""The ``array`` surface: how a whole tile's column currents depart from the ideal sum.

What is solved
--------------
Random conductance maps drawn from the programmable levels (``levels`` evenly spaced over the
1T1R cell's read window, as ``circuitsim array`` draws them), plus, optionally, the two
extreme maps (every cell on the top level: the heaviest line loading; every cell on the
floor). Each map is one deck, the tile's DC operating point with TIAs
(``netlists.array.render_tile_op_deck``: one settled bit-plane), loaded once and re-solved
with ``planes_per_tile`` bit-planes by altering only the row sources (``Runner.load`` +
``alter``). Plane ``p`` drives ``k_p = round(1 + (N - 1) p / (P - 1))`` randomly chosen rows
at ``v_read`` (1 to all rows), the rest at 0 V, except that rows are dropped (at random)
while the ideal crossbar would push a TIA output past ``rail - 3 knee``: the surface
describes the array behind working virtual grounds; what a saturated TIA does belongs to
the ``tia`` surface (on ``chip`` no plane is cut; on ``paper-sim`` dense planes are). The
column current is read exactly from the TIA, ``I_j = (v(tin_j) - v(tout_j)) / R_f``. Each
map's cell conductances ``g`` are the isolated cells' read conductances at ``v_read``
(solved in ngspice for every level): the ideal crossbar is ``I = v @ g``.

Representation (``calibration.irdrop``)
--------------------------------------
The tile as a linear resistive network with the deck's topology and four effective
resistances ``(r_driver, r_row, r_col, r_virtual_ground)`` fitted by least squares
(Levenberg-Marquardt, starting from zero) to the column currents of the training maps. It
is evaluated per plane by damped Jacobi iteration on the cell currents (four cumulative sums
per step), or, since it is linear in the row voltages, as one effective conductance matrix
``W(g)`` per programmed tile: ``C = (v - v_offset) @ W``. The held-out maps (never used in
the fit) give the residuals stored here, in ADC LSB at the TIA output
(``lsb_current_a = v_full_scale / 2^bits / R_f``), against the ideal crossbar's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid
from calibration.irdrop import (
    COEFFICIENT_NAMES,
    IRDropCoefficients,
    column_currents,
    effective_conductance,
    error_lsb,
    error_stats,
    fit_coefficients,
    ideal_column_currents,
    lsb_current_a,
)
from circuitsim.tile import level_table
from netlists.adc_model import adc_model
from netlists.array import render_cell_read_deck, render_tile_op_deck
from netlists.config import HardwareConfig
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["ArrayGrid", "ArraySurface", "SURFACE", "tia_linear_limit_v"]

#: Key under which a job reports its ngspice runs (``calibration.calibrate.SPICE_RUNS_KEY``).

TILE_KINDS = ("random", "top", "floor")
MODEL_NAMES = ("ideal", "nominal", "fitted", "fitted_fast_w")
STATISTIC_NAMES = ("rms", "p99", "max")


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= value <= hi:
        raise ConfigError(f"array grid: {name} = {value!r} is out of range: allowed a whole "
                          f"number in [{lo}, {hi}]")
    return int(value)


@dataclass(frozen=True)
class ArrayGrid:
    """What the ``array`` surface solves.

    ``train_tiles`` random maps fit the coefficients; ``held_out_tiles`` other random maps
    only validate them; ``extreme_tiles`` adds an all-top and an all-floor map to each set.
    ``planes_per_tile`` bit-planes per map (1 to all rows active; the maps hold the
    programmable levels ``hw.levels``), ``iterations`` Jacobi steps of the representation,
    ``seed`` the random draws.
    """

    train_tiles: int = 6
    held_out_tiles: int = 4
    extreme_tiles: bool = True
    planes_per_tile: int = 16
    iterations: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _whole("train_tiles", self.train_tiles, 1, 1000)
        _whole("held_out_tiles", self.held_out_tiles, 1, 1000)
        if not isinstance(self.extreme_tiles, bool):
            raise ConfigError(f"array grid: extreme_tiles = {self.extreme_tiles!r} must be "
                              "true or false")
        _whole("planes_per_tile", self.planes_per_tile, 2, 10000)
        _whole("iterations", self.iterations, 1, 200)
        _whole("seed", self.seed, 0, 2 ** 32 - 1)


_PRESET_GRIDS = {
    # 14 maps x 16 planes of 8x8: a few seconds.
    "tiny": ArrayGrid(train_tiles=6, held_out_tiles=4, planes_per_tile=16, iterations=6),
    # 14 maps x 16 planes of 64x64, each plane a re-solve of a loaded circuit (its cost:
    # benchmarks/bench_spice.py, `op re`).
    "chip": ArrayGrid(train_tiles=6, held_out_tiles=4, planes_per_tile=16, iterations=6),
    # 9 maps x 8 planes of 256x64; rho ~ 1 there, so more iterations.
    "paper-sim": ArrayGrid(train_tiles=3, held_out_tiles=2, planes_per_tile=8, iterations=16),
}


def tia_linear_limit_v(hw: HardwareConfig) -> float:
    """Largest |TIA output| counted as linear: the nearer rail less three knee widths, V."""
    t = hw.tia
    return min(-t.v_rail_low_v, t.v_rail_high_v) - 3.0 * t.v_clamp_knee_v


def _planes(hw: HardwareConfig, g: np.ndarray, rng: np.random.Generator, count: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(count, N) row voltages and the number of rows each plane asked for."""
    rows = hw.array.rows
    v_read = hw.drive.v_read_v
    limit = tia_linear_limit_v(hw) / hw.tia.r_feedback_ohm   # largest linear column current
    asked = np.rint(1 + (rows - 1) * np.arange(count) / (count - 1)).astype(int)
    out = np.zeros((count, rows))
    for p, k in enumerate(asked):
        order = rng.permutation(rows)
        # Ideal column currents of every prefix of ``order``; keep the longest one (up to k)
        # whose largest column stays inside the TIA's linear range.
        peak = np.max(np.cumsum(g[order] * v_read, axis=0), axis=1)
        fits = int(np.searchsorted(peak > limit, True))
        out[p, order[:max(1, min(k, fits))]] = v_read
    return out, asked


class ArraySurface:
    name = "array"
    grid_type = ArrayGrid

    def grid(self, preset: str) -> ArrayGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: ArrayGrid) -> list[dict[str, Any]]:
        extremes = ["top", "floor"] if grid.extreme_tiles else []
        plan = ([("train", "random")] * grid.train_tiles + [("train", k) for k in extremes]
                + [("held_out", "random")] * grid.held_out_tiles
                + [("held_out", k) for k in extremes])
        return [{"tile": t, "split": split, "kind": kind, "seed": grid.seed,
                 "planes": grid.planes_per_tile, "levels": hw.levels.count}
                for t, (split, kind) in enumerate(plan)]

    def solve(self, hw: HardwareConfig, grid: ArrayGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows, cols = hw.array.rows, hw.array.cols
        kind = point["kind"]
        if kind not in TILE_KINDS:
            raise ConfigError(f"array point: kind {kind!r} must be one of {list(TILE_KINDS)}")
        rng = np.random.default_rng([int(point["seed"]), int(point["tile"])])
        level_n, level_g = level_table(hw, runner)
        if kind == "random":
            pick = rng.integers(0, len(level_n), size=(rows, cols))
        else:
            pick = np.full((rows, cols), len(level_n) - 1 if kind == "top" else 0)
        states, g = level_n[pick], level_g[pick]
        row_v, asked = _planes(hw, g, rng, int(point["planes"]))

        name = f"array_tile{int(point['tile'])}"
        tout = np.zeros((len(row_v), cols))
        tin = np.zeros((len(row_v), cols))
        with runner.load(render_tile_op_deck(hw, states, row_v[0], name=name),
                         name=name) as circuit:
            for p, v in enumerate(row_v):
                if p:
                    circuit.alter({f"vrow{i}": float(v[i]) for i in range(rows)})
                res = circuit.run()
                tout[p] = [float(res[f"v(tout{j})"][0]) for j in range(cols)]
                tin[p] = [float(res[f"v(tin{j})"][0]) for j in range(cols)]
        if not (np.all(np.isfinite(tout)) and np.all(np.isfinite(tin))):
            raise SimulatorError("non-finite TIA voltages", netlist=name)
        return {
            "states": states,
            "conductance_s": g,
            "row_voltage_v": row_v,
            "asked_rows": asked,
            "tia_output_v": tout,
            "virtual_ground_v": tin,
            "solve_seconds": np.array(time.perf_counter() - start),
        }

    def assemble(self, hw: HardwareConfig, grid: ArrayGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        if len(points) != len(results) or not points:
            raise ConfigError(f"array surface: {len(points)} points but {len(results)} results")
        rows, cols = hw.array.rows, hw.array.cols
        r_f = hw.tia.r_feedback_ohm
        n_tiles = len(points)
        states = np.stack([np.asarray(r["states"], float) for r in results])
        g = np.stack([np.asarray(r["conductance_s"], float) for r in results])
        per_tile_v = [np.asarray(r["row_voltage_v"], float) for r in results]
        case_tile = np.concatenate([np.full(len(v), t) for t, v in enumerate(per_tile_v)])
        row_v = np.concatenate(per_tile_v)
        tout = np.concatenate([np.asarray(r["tia_output_v"], float) for r in results])
        tin = np.concatenate([np.asarray(r["virtual_ground_v"], float) for r in results])
        asked = np.concatenate([np.asarray(r["asked_rows"], np.int64) for r in results])
        spice_i = (tin - tout) / r_f
        held = np.array([p["split"] == "held_out" for p in points])
        kinds = np.array([TILE_KINDS.index(p["kind"]) for p in points])
        case_held = held[case_tile]
        limit = tia_linear_limit_v(hw)
        in_range = np.all(np.abs(tout) <= limit, axis=1)
        g_case = g[case_tile]
        vos = hw.tia.v_offset_v
        k = grid.iterations

        train = ~case_held & in_range
        if not np.any(train):
            raise SimulatorError("no training case kept its TIAs in their linear range",
                                 netlist="array")
        if not np.any(case_held & in_range):
            raise SimulatorError("no held-out case kept its TIAs in their linear range",
                                 netlist="array")
        fit = fit_coefficients(g_case[train], row_v[train], spice_i[train], iterations=k,
                               v_offset_v=vos)
        coeffs = fit.coefficients
        nominal = IRDropCoefficients.nominal(hw)
        ideal_i = ideal_column_currents(g_case, row_v - vos)
        nominal_i = column_currents(g_case, row_v, nominal, iterations=k, v_offset_v=vos)
        model_i = column_currents(g_case, row_v, coeffs, iterations=k, v_offset_v=vos)
        w_exact = effective_conductance(g, coeffs, iterations=k, method="exact")
        w_fast = effective_conductance(g, coeffs, iterations=k, method="fast")
        fast_i = np.einsum("ci,cij->cj", row_v - vos, w_fast[case_tile])
        converged_i = column_currents(g_case, row_v, coeffs, iterations=2 * k, v_offset_v=vos)

        models = np.stack([ideal_i, nominal_i, model_i, fast_i])          # (model, case, col)
        errors = error_lsb(models, spice_i[None], hw)
        sel = case_held & in_range
        held_stats = np.stack([error_stats(e[sel]) for e in errors])
        train_stats = np.stack([error_stats(e[train]) for e in errors])
        convergence_lsb = float(np.max(np.abs(error_lsb(model_i, converged_i, hw)[sel])))
        ratio = float(held_stats[0, 0] / held_stats[2, 0]) if held_stats[2, 0] > 0 else 0.0
        lsb_a = lsb_current_a(hw)
        spice_runs = 2 * n_tiles + len(row_v)   # per map: level table (2) + one per plane

        idx = lambda n: np.arange(n, dtype=np.int64)  # noqa: E731
        axes = {
            "tile": Array(idx(n_tiles), "1", "index of a conductance map solved in ngspice"),
            "case": Array(idx(len(row_v)), "1",
                          "one bit-plane of one map: a settled DC operating point of the tile"),
            "row": Array(idx(rows), "1", "row index (0 = farthest from the TIAs)"),
            "col": Array(idx(cols), "1", "column index (0 = nearest the row drivers)"),
            "coefficient": Array(idx(len(COEFFICIENT_NAMES)), "1",
                                 "index into " + ", ".join(COEFFICIENT_NAMES)),
            "model": Array(idx(len(MODEL_NAMES)), "1", "index into " + ", ".join(MODEL_NAMES)),
            "statistic": Array(idx(len(STATISTIC_NAMES)), "1",
                               "index into " + ", ".join(STATISTIC_NAMES)
                               + " (of |error|; rms of the signed error)"),
        }
        d = {
            "coefficients_ohm": (Array(coeffs.as_array(), "ohm",
                                       "fitted effective resistances (r_driver, r_row, r_col, "
                                       "r_virtual_ground) of the IR-drop network"),
                                 ("coefficient",)),
            "coefficient_std_error_ohm": (Array(fit.std_error_ohm, "ohm",
                                                "standard errors of the fitted coefficients"),
                                          ("coefficient",)),
            "nominal_coefficients_ohm": (Array(nominal.as_array(), "ohm",
                                               "the circuit's own values: r_driver_ohm, "
                                               "r_wire_row_ohm, r_wire_col_ohm, R_f/(1+A)"),
                                         ("coefficient",)),
            "tile_states": (Array(states, "1e26 m^-3", "frozen RRAM state of every cell"),
                            ("tile", "row", "col")),
            "tile_conductance_s": (Array(g, "S", "cell read conductance at v_read, isolated "
                                         "1T1R solved in ngspice: the ideal crossbar's g"),
                                   ("tile", "row", "col")),
            "tile_held_out": (Array(held.astype(np.int8), "1",
                                    "1: map used only for validation; 0: used in the fit"),
                              ("tile",)),
            "tile_kind": (Array(kinds.astype(np.int8), "1",
                                "index into " + ", ".join(TILE_KINDS)), ("tile",)),
            "effective_conductance_s": (Array(w_exact, "S",
                                              "W with C = (v - v_offset) @ W, fitted "
                                              "coefficients, method 'exact'"),
                                        ("tile", "row", "col")),
            "case_tile": (Array(case_tile.astype(np.int64), "1", "map of each case"),
                          ("case",)),
            "case_held_out": (Array(case_held.astype(np.int8), "1",
                                    "1: held-out case (its map was not fitted)"), ("case",)),
            "case_in_range": (Array(in_range.astype(np.int8), "1",
                                    "1: every TIA output within rail - 3 knee (used in fit "
                                    "and statistics)"), ("case",)),
            "case_active_rows": (Array((row_v != 0).sum(axis=1).astype(np.int64), "1",
                                       "rows driven at v_read"), ("case",)),
            "case_asked_rows": (Array(asked, "1", "rows the plane asked for before the TIA "
                                      "range cut"), ("case",)),
            "row_voltage_v": (Array(row_v, "V", "row driver voltage (v_read or 0)"),
                              ("case", "row")),
            "spice_column_current_a": (Array(spice_i, "A", "ngspice column current "
                                             "(v(tin) - v(tout)) / R_f"), ("case", "col")),
            "spice_tia_output_v": (Array(tout, "V", "ngspice TIA output v(tout)"),
                                   ("case", "col")),
            "spice_virtual_ground_v": (Array(tin, "V", "ngspice TIA input v(tin)"),
                                       ("case", "col")),
            "model_column_current_a": (Array(model_i, "A", "the representation with the "
                                             "fitted coefficients, per plane"),
                                       ("case", "col")),
            "ideal_column_current_a": (Array(ideal_i, "A", "ideal crossbar (v - v_offset) @ g"),
                                       ("case", "col")),
            "held_out_error_lsb": (Array(held_stats, "LSB", "held-out in-range cases: "
                                         "statistics of model - ngspice per column and plane"),
                                   ("model", "statistic")),
            "train_error_lsb": (Array(train_stats, "LSB", "training cases: statistics of "
                                      "model - ngspice per column and plane"),
                                ("model", "statistic")),
        }
        datasets = {key: arr for key, (arr, _) in d.items()}
        dims = {key: dm for key, (_, dm) in d.items()}
        attrs = {
            "representation": "linear IR-drop network, effective resistances fitted to ngspice "
                              "(calibration.irdrop): I = g*(v - v_offset - dV(I)), dV_ij = "
                              "r_driver L_i + r_row sum_{s<=j} sum_{j'>=s} I_ij' + r_vg C_j + "
                              "r_col sum_{t>=i} sum_{i'<=t} I_i'j; damped Jacobi, w = "
                              "2/(2+rho), rho = max dV(g); C = (v - v_offset) @ W(g)",
            "coefficient_names": list(COEFFICIENT_NAMES),
            "model_names": list(MODEL_NAMES),
            "statistic_names": list(STATISTIC_NAMES),
            "tile_kind_names": list(TILE_KINDS),
            "iterations": k,
            "v_offset_v": vos,
            "lsb_current_a": lsb_a,
            "lsb_v": adc_model(hw).lsb_v,
            "tia_linear_limit_v": limit,
            "fit_steps": fit.steps,
            "fit_rms_initial_a": fit.rms_initial_a,
            "fit_rms_final_a": fit.rms_final_a,
            "held_out_rms_lsb": float(held_stats[2, 0]),
            "held_out_p99_lsb": float(held_stats[2, 1]),
            "held_out_max_lsb": float(held_stats[2, 2]),
            "ideal_held_out_rms_lsb": float(held_stats[0, 0]),
            "ideal_held_out_p99_lsb": float(held_stats[0, 1]),
            "ideal_held_out_max_lsb": float(held_stats[0, 2]),
            "fast_w_held_out_rms_lsb": float(held_stats[3, 0]),
            "fast_w_held_out_max_lsb": float(held_stats[3, 2]),
            "held_out_definition": "the random maps never fitted, plus the extreme maps "
                                   "(if any) with other bit-planes; only cases whose TIA "
                                   "outputs all stay within tia_linear_limit_v",
            "ideal_over_fitted_rms": ratio,
            "convergence_max_lsb": convergence_lsb,
            "held_out_cases": int(sel.sum()),
            "cases_out_of_range": int((~in_range).sum()),
            "spice_runs": spice_runs,
            "solve_seconds": float(sum(float(np.asarray(r.get("solve_seconds", 0.0)))
                                       for r in results)),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: ArrayGrid) -> list[str]:
        d = hw.device
        n_mid = 0.5 * (d.n_min + d.n_max)
        states = np.full((hw.array.rows, hw.array.cols), n_mid)
        return [
            render_cell_read_deck(hw, np.linspace(d.n_min, d.n_max, 5), name="array_levels"),
            render_tile_op_deck(hw, states, np.full(hw.array.rows, hw.drive.v_read_v),
                                name="array_tile"),
        ]


SURFACE = ArraySurface()
