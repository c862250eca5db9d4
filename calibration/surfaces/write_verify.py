"""Surface ``write_verify``: what the paper's write-and-verify procedure actually reaches.

For each target level, ``repeats`` Monte Carlo cells (each its own device-to-device draw
``kd``, ``wd`` and a fresh cycle-to-cycle draw ``kc`` per pulse) are programmed by
:func:`circuitsim.write_verify.write_verify` (the procedure, step by step, is
:mod:`circuitsim.write_policy`'s, built from the hardware), every step solved in ngspice. Stored: the conductance each cell reached
and how many pulses it took, and their statistics per target. This is the programming error
and the write cost that training uses.

Targets are programmable levels (``hw.levels``: ``count`` levels evenly over their window
inside the nominal cell's read window ``[g(n_min), g(n_max)]``, 1T1R read at
``drive.v_read_v``, solved in ngspice by each job: an ``.op`` of two cells); the tolerance
is ``write_verify.tolerance_levels`` level spacings (default 0.5, the paper's "program
error 0.5 level"). Cells start at their own
floor (``n_min x wd``, the state a full RESET leaves), so the reset-to-floor phase costs no
pulses here (from an arbitrary state it would: a 3 V RESET moves this device by at most
~0.1 uS per pulse).

Jobs: the (target, repeat) cells in target-major order, ``cells_per_job`` per job; each cell
has its own seed derived from ``(seed, target level, repeat)``, so a cell's outcome does not
depend on how cells are grouped into jobs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from calibration.base import Array, JobResult, Point, SurfaceData, preset_grid
from circuitsim.write_policy import WritePolicy
from circuitsim.write_verify import read_window, write_verify
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError
from netlists.programming_batch import BatchCell, render_batch_deck

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["WriteVerifyGrid", "WriteVerifySurface", "SURFACE"]

_NAME = "write_verify"
#: Quantiles of the reached conductance stored per target.
QUANTILES = (0.1, 0.5, 0.9)


def _whole(field_name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        top = "" if hi is None else f", at most {hi}"
        raise ConfigError(f"{_NAME}.{field_name} = {value!r} must be a whole number >= {lo}{top}")
    return int(value)


@dataclass(frozen=True)
class WriteVerifyGrid:
    """Sweep grid of the ``write_verify`` surface (defaults: the ``chip`` preset).

    ``targets``: how many of the programmable levels (``hw.levels``) are targeted, spread
    evenly over them (every level when there are no more; :meth:`LevelsParams.targets`), or
    ``target_levels``: the level indices themselves (strictly increasing, at least 2).
    ``repeats``: Monte Carlo cells per target (>= 2). ``cells_per_job``: cells programmed
    together in one job (one ngspice transient per step). ``seed``: of all draws. The
    procedure's tolerance, floor and limits are the hardware's (``hw.write_verify``).
    """

    targets: int = 32
    target_levels: tuple[int, ...] = ()
    repeats: int = 8
    cells_per_job: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _whole("targets", self.targets, 2, 4096)
        levels = self.target_levels
        try:
            lv = tuple(levels)
        except TypeError:
            raise ConfigError(f"{_NAME}.target_levels = {levels!r} must be a sequence of "
                              "level indices") from None
        if len(lv) == 1:
            raise ConfigError(f"{_NAME}.target_levels = {levels!r} has 1 point: a sweep axis "
                              "needs at least 2")
        for v in lv:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"{_NAME}.target_levels holds {v!r}: a level index must be "
                                  "a whole number >= 0")
        if any(b <= a for a, b in zip(lv, lv[1:])):
            raise ConfigError(f"{_NAME}.target_levels = {levels!r} must be strictly increasing")
        object.__setattr__(self, "target_levels", tuple(int(v) for v in lv))
        _whole("repeats", self.repeats, 2)
        _whole("cells_per_job", self.cells_per_job, 1, 10_000)
        _whole("seed", self.seed, 0)

    def levels(self, hw: HardwareConfig) -> tuple[int, ...]:
        """The targeted level indices among ``hw.levels.count``."""
        if not self.target_levels:
            return hw.levels.targets(self.targets)
        top = hw.levels.count - 1
        if self.target_levels[-1] > top:
            raise ConfigError(f"{_NAME}.target_levels holds {self.target_levels[-1]}: a level "
                              f"index must lie in [0, {top}] (levels.count = "
                              f"{hw.levels.count})")
        return self.target_levels


_PRESETS = {
    "tiny": dict(targets=8, repeats=2, cells_per_job=8),
    "chip": {},
    "paper-sim": dict(targets=64),
}


def _cell_seed(seed: int, level: int, repeat: int) -> int:
    return int(np.random.SeedSequence([seed, level, repeat]).generate_state(1)[0])


def _settings(hw: HardwareConfig) -> dict[str, Any]:
    """The procedure's settings, recorded with the surface."""
    return {"n_levels": hw.levels.count, **dataclasses.asdict(hw.write_verify)}


_INT_KEYS = ("pulses", "set_pulses", "reset_pulses", "floor_pulses", "rounds", "success")


class WriteVerifySurface:
    name = _NAME
    grid_type = WriteVerifyGrid

    def grid(self, preset: str) -> WriteVerifyGrid:
        return preset_grid(self.name, _PRESETS, preset, WriteVerifyGrid)

    def points(self, hw: HardwareConfig, grid: WriteVerifyGrid) -> list[Point]:
        cells = [[t, level, r, _cell_seed(grid.seed, level, r)]
                 for t, level in enumerate(grid.levels(hw)) for r in range(grid.repeats)]
        return [{"cells": cells[k:k + grid.cells_per_job]}
                for k in range(0, len(cells), grid.cells_per_job)]

    def solve(self, hw: HardwareConfig, grid: WriteVerifyGrid, point: Point,
              runner: SpiceRunner) -> JobResult:
        cells = [tuple(int(v) for v in c) for c in point["cells"]]
        window = read_window(hw, runner=runner)
        targets = hw.levels.conductances(window)[[level for _, level, _, _ in cells]]
        solver = getattr(runner, "solver", None)
        res = write_verify(hw, targets, runner=runner, seed=[c[3] for c in cells],
                           window_s=window,
                           solver=solver if isinstance(solver, SolverConfig) else None)
        return {"g_reached": res.g_reached, "state_reached": res.state_reached,
                "pulses": res.pulses, "set_pulses": res.set_pulses,
                "reset_pulses": res.reset_pulses, "floor_pulses": res.floor_pulses,
                "rounds": res.rounds, "success": res.success.astype(np.int64),
                "window": np.array(window), "steps": np.array(res.steps),
                "spice_runs": np.array(res.spice_runs + 1)}

    def assemble(self, hw: HardwareConfig, grid: WriteVerifyGrid, points: Sequence[Point],
                 results: Sequence[JobResult]) -> SurfaceData:
        levels = np.array(grid.levels(hw))
        n_t, n_r = levels.size, grid.repeats
        if len(points) != len(results):
            raise SimulatorError(f"{len(results)} job results for {len(points)} points",
                                 netlist=_NAME)
        raw = {key: np.full((n_t, n_r), np.nan) for key in ("g_reached", "state_reached")
               + _INT_KEYS}
        filled = np.zeros((n_t, n_r), dtype=bool)
        windows = []
        for point, result in zip(points, results):
            windows.append(np.asarray(result["window"], dtype=float))
            for j, cell in enumerate(point["cells"]):
                t, r = int(cell[0]), int(cell[2])
                for key in raw:
                    raw[key][t, r] = float(np.asarray(result[key])[j])
                filled[t, r] = True
        if not filled.all():
            raise SimulatorError("some (target, repeat) cells have no result", netlist=_NAME)
        window = windows[0]
        if any(not np.allclose(w, window, rtol=1e-9, atol=0) for w in windows):
            raise SimulatorError("jobs measured different read windows", netlist=_NAME)
        spacing = hw.levels.spacing(window)
        tol = WritePolicy.of(hw).thresholds(window)[0]
        targets = hw.levels.conductances(window)[levels]
        g = raw["g_reached"]
        err = g - targets[:, None]
        ints = {key: raw[key].astype(np.int64) for key in _INT_KEYS}
        mc = f"over {n_r} Monte Carlo repeats (sample std, ddof=1)"
        axes = {
            "target": Array(targets, "S",
                            f"target 1T1R read conductance (read at {hw.drive.v_read_v:g} V): "
                            f"level target_level of {hw.levels.count} levels over their window"),
            "repeat": Array(np.arange(n_r, dtype=np.int64), "1",
                            "Monte Carlo repeat (own device-to-device draw, own per-pulse "
                            "cycle-to-cycle draws)"),
            "quantile": Array(np.array(QUANTILES), "1", "quantile of the reached conductance"),
        }
        datasets = {
            "target_level": Array(levels.astype(np.int64), "1",
                                  f"level index of each target among {hw.levels.count}"),
            "g_reached": Array(g, "S", "read conductance each cell reached (its last verify "
                                       "read)"),
            "pulses": Array(ints["pulses"], "1", "write pulses each cell took (floor + SET + "
                                                 "RESET)"),
            "set_pulses": Array(ints["set_pulses"], "1", "SET pulses of the adaptive phases"),
            "reset_pulses": Array(ints["reset_pulses"], "1",
                                  "RESET pulses of the adaptive phases"),
            "floor_pulses": Array(ints["floor_pulses"], "1",
                                  "RESET pulses of the reset-to-floor phase"),
            "rounds": Array(ints["rounds"], "1", "SET+RESET rounds started"),
            "success": Array(ints["success"], "1",
                             "1 if the final read is within the tolerance of the target"),
            "g_reached_mean": Array(g.mean(axis=1), "S", f"mean reached conductance {mc}"),
            "g_reached_std": Array(g.std(axis=1, ddof=1), "S",
                                   f"spread (std) of the reached conductance {mc}: the "
                                   "programming error"),
            "error_mean": Array(err.mean(axis=1), "S",
                                "mean of reached minus target conductance (bias)"),
            "error_rms": Array(np.sqrt((err ** 2).mean(axis=1)), "S",
                               "root mean square of reached minus target conductance"),
            "g_reached_quantiles": Array(np.quantile(g, QUANTILES, axis=1).T, "S",
                                         "quantiles of the reached conductance (linear "
                                         "interpolation between repeats)"),
            "pulses_mean": Array(ints["pulses"].mean(axis=1), "1",
                                 f"mean number of write pulses {mc}"),
            "pulses_max": Array(ints["pulses"].max(axis=1), "1",
                                "largest number of write pulses among the repeats"),
            "success_rate": Array(ints["success"].mean(axis=1), "1",
                                  "fraction of repeats that ended within the tolerance"),
        }
        per_cell = ("target", "repeat")
        dims: dict[str, tuple[str, ...]] = {key: per_cell for key in
                                            ("g_reached", "pulses", "set_pulses",
                                             "reset_pulses", "floor_pulses", "rounds",
                                             "success")}
        dims.update({key: ("target",) for key in
                     ("target_level", "g_reached_mean", "g_reached_std", "error_mean",
                      "error_rms", "pulses_mean", "pulses_max", "success_rate")})
        dims["g_reached_quantiles"] = ("target", "quantile")
        attrs = {
            "representation": "outcome of every Monte Carlo cell and its statistics per "
                              "target; procedure: circuitsim.write_policy (module docstring)",
            "window_low_s": float(window[0]),
            "window_high_s": float(window[1]),
            "level_spacing_s": float(spacing),
            "tolerance_s": float(tol),
            "start": "each cell at its own floor n_min x wd (the state a full RESET leaves)",
            "pulse_width_s": float(hw.drive.t_write_s),
            "program_error_std_s": float(err.std(ddof=1)),
            "program_error_std_levels": float(err.std(ddof=1) / spacing),
            "pulses_mean_all": float(ints["pulses"].mean()),
            "success_rate_all": float(ints["success"].mean()),
            "spice_runs": int(sum(int(np.asarray(r.get("spice_runs", 0))) for r in results)),
            **_settings(hw),
            "seed": int(grid.seed),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: WriteVerifyGrid) -> list[str]:
        """A representative controller step: a SET, a RESET and an idle cell in one deck."""
        d, drv = hw.device, hw.drive
        cells = [BatchCell(n0=d.n_min, kind="set", amplitude_v=drv.v_set_min_v),
                 BatchCell(n0=d.n_max, kind="reset", amplitude_v=drv.v_reset_min_v),
                 BatchCell(n0=d.n_min)]
        return [render_batch_deck(hw, cells, width_s=drv.t_write_s, read_before=False,
                                  name="write_verify").text]


SURFACE = WriteVerifySurface()
