"""Check the surrogate tile against full ngspice solves: what ``circuitsim validate`` runs.

Cases are drawn fresh (a seed stream of their own, apart from the calibration's draws, so
none is a map the calibration fitted): conductance maps of the programmable levels
(``hw.levels``: evenly over their window in the 1T1R cell's read window, each level's state
and read conductance solved in ngspice) and 8-bit inputs. The worst cases come first and
are interleaved with uniform random ones: every cell on the top level with every input at
full scale (the largest currents and IR drop), every cell on the floor (the smallest
signal), every cell on the top level with random inputs, and a map whose left half sits on
the top level and right half on the floor, at full-scale inputs. Where uniform random
inputs on every row would carry the mean column past half the converter's full scale (a
256-row tile sized for the paper's 0-70 uA column range), every other random case is
``random-in-range``: random levels, with random inputs on only as many rows as bring the
mean column to half the full scale (the rest at zero, as in a sparse activation vector),
so that the codes are those a network's reads produce. Each case is solved as a whole
bit-serial tile in ngspice (``circuitsim.tile.solve_tile``: the transistor-level cells,
wires, TIAs, front-ends and quantizers) on a pool of worker processes, and read by the
surrogate (no noise: the SPICE decks are deterministic).

Compared: the accumulated front-end voltage ``D`` before the final conversion, in ADC LSB
(rms, 99th percentile and maximum of ``|surrogate - SPICE|`` over all columns of all cases),
the fraction of identical codes, and the same errors for an ideal linear crossbar of the
same cell conductances (``D = R_f v_read x @ g / 2^bits``). ``D`` is compared unclipped
(past the full scale too, where the TIA is still linear) and as the converter sees it,
clipped to ``[0, v_full_scale_v]``, with the fraction of columns past the full scale.
Speed: the mean ngspice solve time per case against the surrogate's time per VMM at batch
1024 (one programmed tile, :meth:`~surrogate.tile.TileSurrogate.read` without noise,
median of repeats).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from calibration.executor import Job, run_jobs
from calibration.irdrop import error_stats
from calibration.store import Table
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError

__all__ = ["ValidationCase", "ValidationResult", "draw_cases", "validate", "WORST_CASES",
           "in_range_rows",
           "time_surrogate", "table_solver", "plot_validation"]

#: The worst-case maps, in the order they are drawn (interleaved with random ones).
WORST_CASES = ("top-full-scale", "floor", "top", "half-top-full-scale")
_SEED_TAG = 0x76616C69   # keeps the validation's draws apart from the calibration's
_BATCH = 1024


@dataclass(frozen=True)
class ValidationCase:
    """One tile read: ``levels`` (rows, cols) level index per cell, ``x`` (rows,) inputs."""

    kind: str
    levels: np.ndarray
    x: np.ndarray


def draw_cases(rows: int, cols: int, count: int, *, seed: int, levels: int,
               input_bits: int = 8, in_range_rows: int | None = None
               ) -> list[ValidationCase]:
    """``count`` cases: worst ones at even positions until all are used, random otherwise.

    With ``in_range_rows`` below ``rows``, the random cases at odd positions drive only that
    many random rows (``random-in-range``)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"cases = {count!r} must be a whole number >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed = {seed!r} must be a whole number >= 0")
    sparse = in_range_rows is not None and in_range_rows < rows
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SEED_TAG]))
    top, full = levels - 1, 2 ** input_bits - 1
    out: list[ValidationCase] = []
    worst = iter(WORST_CASES)
    for i in range(count):
        odd = "random-in-range" if sparse else "random"
        kind = next(worst, "random") if i % 2 == 0 else odd
        x = rng.integers(0, full + 1, size=rows)
        if kind == "random-in-range":
            x[rng.permutation(rows)[int(in_range_rows):]] = 0  # type: ignore[arg-type]
        if kind.startswith("random"):
            lv = rng.integers(0, levels, size=(rows, cols))
        elif kind == "floor":
            lv = np.zeros((rows, cols), dtype=np.int64)
        else:
            lv = np.full((rows, cols), top, dtype=np.int64)
            if kind.startswith("half"):
                lv[:, cols // 2:] = 0
            if kind.endswith("full-scale"):
                x = np.full(rows, full)
        out.append(ValidationCase(kind, lv.astype(np.int64), x.astype(np.int64)))
    return out


def table_solver(table: Table) -> SolverConfig:
    """Solver settings with the step settings the table was calibrated with (the tile deck
    must be integrated as the calibration's decks were)."""
    import json

    steps = json.loads(table.attrs.get("manifest_json", "{}")).get("solver", {})
    return SolverConfig.from_dict({**dataclasses.asdict(SolverConfig()), **steps})


def _solve_case(context: Mapping[str, Any], job: Job) -> dict[str, np.ndarray]:
    """Worker side: one whole-tile ngspice solve (picklable, top level)."""
    from calibration.worker import runner_for
    from circuitsim.tile import solve_tile

    hw = HardwareConfig.from_dict(context["hardware"])
    solver = SolverConfig.from_dict(context["solver"])
    states = np.asarray(context["level_states"])[np.asarray(context["levels"][job.index])]
    res = solve_tile(hw, states, np.asarray(context["x"][job.index]),
                     runner=runner_for(solver), solver=solver, name=f"validate{job.index}")
    return {"codes": res.codes, "accumulated_v": res.accumulated_v,
            "solve_seconds": np.asarray(res.solve_seconds)}


@dataclass(frozen=True)
class ValidationResult:
    """Per-case arrays (cases x cols) and the summary of :func:`validate`."""

    cases: list[ValidationCase]
    level_g: np.ndarray
    spice_v: np.ndarray
    spice_codes: np.ndarray
    surrogate_v: np.ndarray
    surrogate_codes: np.ndarray
    ideal_v: np.ndarray
    lsb_v: float
    full_scale_v: float
    spice_seconds: np.ndarray
    surrogate_seconds_per_vmm: float
    prepare_seconds_per_tile: float
    linear: np.ndarray

    def summary(self) -> dict[str, Any]:
        err = (self.surrogate_v - self.spice_v) / self.lsb_v
        ideal = (self.ideal_v - self.spice_v) / self.lsb_v
        fs = self.full_scale_v
        clipped = (np.clip(self.surrogate_v, 0.0, fs) - np.clip(self.spice_v, 0.0, fs)
                   ) / self.lsb_v
        saturated = self.spice_v > fs
        linear = np.asarray(self.linear).reshape(len(self.cases), -1)
        rms, p99, mx = error_stats(err)
        c_rms, c_p99, c_max = error_stats(clipped)
        irms, ip99, imx = error_stats(ideal)
        spice = float(np.mean(self.spice_seconds))
        kinds = sorted({c.kind for c in self.cases})
        per_kind = {}
        for kind in kinds:
            sel = np.array([c.kind == kind for c in self.cases])
            k_rms, _, k_max = error_stats(err[sel])
            kc_rms, _, kc_max = error_stats(clipped[sel])
            per_kind[kind] = {"cases": int(sel.sum()), "rms_lsb": float(k_rms),
                              "max_lsb": float(k_max), "mean_lsb": float(np.mean(err[sel])),
                              "ideal_rms_lsb": float(error_stats(ideal[sel])[0]),
                              "clipped_rms_lsb": float(kc_rms),
                              "clipped_max_lsb": float(kc_max),
                              "saturated": float(np.mean(saturated[sel])),
                              "shortcut": float(np.mean(linear[sel]))}
        return {
            "cases": len(self.cases),
            "rms_lsb": float(rms),
            "p99_lsb": float(p99),
            "max_lsb": float(mx),
            "mean_lsb": float(np.mean(err)),
            "clipped_rms_lsb": float(c_rms),
            "clipped_p99_lsb": float(c_p99),
            "clipped_max_lsb": float(c_max),
            "saturated": float(np.mean(saturated)),
            "code_match": float(np.mean(self.surrogate_codes == self.spice_codes)),
            "ideal_rms_lsb": float(irms),
            "ideal_p99_lsb": float(ip99),
            "ideal_max_lsb": float(imx),
            "ideal_over_surrogate_rms": float(irms / rms) if rms > 0 else float("inf"),
            "spice_seconds_per_vmm": spice,
            "surrogate_seconds_per_vmm": self.surrogate_seconds_per_vmm,
            "speedup": spice / self.surrogate_seconds_per_vmm,
            "surrogate_prepare_seconds_per_tile": self.prepare_seconds_per_tile,
            "shortcut_cases": float(np.mean(linear)),
            "by_kind": per_kind,
        }


def time_surrogate(surrogate: Any, g: Any, *, batch: int = _BATCH, repeats: int = 20,
                   seed: int = 0) -> tuple[float, float]:
    """(seconds per VMM at ``batch``, seconds to prepare one tile): medians of ``repeats``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    g = torch.as_tensor(g, dtype=surrogate.dtype)
    x = torch.randint(0, surrogate.input_levels, (batch, surrogate.rows), generator=gen
                      ).to(surrogate.dtype)
    prep_times = []
    for _ in range(max(3, repeats // 4)):
        t0 = time.perf_counter()
        tiles = surrogate.prepare(g)
        prep_times.append(time.perf_counter() - t0)
    for _ in range(3):
        surrogate.read(x, tiles, check=False)
    read_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        surrogate.read(x, tiles, check=False)
        read_times.append(time.perf_counter() - t0)
    return float(np.median(read_times)) / batch, float(np.median(prep_times))


def in_range_rows(hw: HardwareConfig, level_g: np.ndarray) -> int:
    """Rows whose uniform random inputs on uniform random levels bring the mean column's
    ``D`` to half the converter's full scale (at least 1)."""
    full = 2 ** hw.drive.input_bits - 1
    per_row = (hw.tia.r_feedback_ohm * hw.drive.v_read_v * float(np.mean(level_g))
               * (full / 2) / 2 ** hw.drive.input_bits)
    return max(1, int(round(0.5 * hw.adc.v_full_scale_v / per_row)))


def validate(table: Table, *, cases: int = 20, seed: int = 0, rows: int | None = None,
             cols: int | None = None, workers: int = 2, solver: SolverConfig | None = None,
             method: str = "exact",
             progress: Callable[[int, int], None] | None = None) -> ValidationResult:
    """Draw ``cases`` held-out cases, solve each in ngspice and in the surrogate, compare."""
    import torch

    from circuitsim.runner import Runner
    from circuitsim.tile import level_table
    from surrogate.tile import TileSurrogate

    surrogate = TileSurrogate(table, rows=rows, cols=cols, method=method)
    hw = surrogate.hw
    solver = solver or table_solver(table)
    with Runner(solver) as runner:
        level_states, level_g = level_table(hw, runner)
    drawn = draw_cases(hw.array.rows, hw.array.cols, cases, seed=seed,
                       levels=hw.levels.count, input_bits=hw.drive.input_bits,
                       in_range_rows=in_range_rows(hw, level_g))

    results: dict[int, Mapping[str, np.ndarray]] = {}
    context = {"hardware": hw.to_dict(), "solver": dataclasses.asdict(solver),
               "level_states": level_states, "levels": [c.levels for c in drawn],
               "x": [c.x for c in drawn]}
    jobs = [Job("validate", i, {"case": i, "kind": c.kind}) for i, c in enumerate(drawn)]
    run_jobs(jobs, functools.partial(_solve_case, context), workers=workers,
             on_result=lambda job, res: results.__setitem__(job.index, res),
             progress=progress)

    g = np.stack([level_g[c.levels] for c in drawn])                  # (cases, N, M)
    x = np.stack([c.x for c in drawn]).astype(float)[:, None, :]      # (cases, 1, N)
    tiles = surrogate.prepare(torch.as_tensor(g))
    read = surrogate.read(torch.as_tensor(x, dtype=surrogate.dtype), tiles)
    ideal = surrogate.ideal_analog(torch.as_tensor(x), torch.as_tensor(g))
    per_vmm, prep = time_surrogate(surrogate, g[-1])
    order = range(len(drawn))
    return ValidationResult(
        cases=drawn, level_g=level_g,
        spice_v=np.stack([results[i]["accumulated_v"] for i in order]),
        spice_codes=np.stack([results[i]["codes"] for i in order]),
        surrogate_v=read.analog_v[:, 0].double().numpy(),
        surrogate_codes=read.codes[:, 0].numpy(),
        ideal_v=ideal[:, 0].double().numpy(), lsb_v=surrogate.lsb_v,
        full_scale_v=hw.adc.v_full_scale_v,
        spice_seconds=np.array([float(results[i]["solve_seconds"]) for i in order]),
        surrogate_seconds_per_vmm=per_vmm, prepare_seconds_per_tile=prep,
        linear=tiles.linear.numpy())


def plot_validation(result: ValidationResult, path: Path | str) -> Path:
    """Scatter of the surrogate (and the ideal crossbar) against ngspice, in LSB; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calibration.report import save_png

    path = Path(path)
    lsb = result.lsb_v
    spice = result.spice_v.ravel() / lsb
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.plot(spice, result.ideal_v.ravel() / lsb, ".", ms=2, color="0.7",
             label="ideal crossbar")
    ax1.plot(spice, result.surrogate_v.ravel() / lsb, ".", ms=2, label="surrogate")
    lim = [min(spice.min(), 0), spice.max() * 1.05]
    ax1.plot(lim, lim, "k-", lw=0.6)
    ax1.set(xlabel="ngspice D, LSB", ylabel="model D, LSB", title="accumulated voltage")
    ax1.legend(loc="upper left")
    ax2.plot(spice, (result.surrogate_v.ravel() - result.spice_v.ravel()) / lsb, ".", ms=2)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set(xlabel="ngspice D, LSB", ylabel="surrogate - ngspice, LSB",
            title=f"{len(result.cases)} cases, {result.spice_v.shape[1]} columns each")
    fig.tight_layout()
    return save_png(fig, path)
