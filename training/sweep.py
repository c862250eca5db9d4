"""A grid of training runs from one spec: what ``circuitsim sweep SPEC.toml`` does.

A spec is TOML with up to three tables::

    [base]                      # every run: any train option, and where its table comes from
    model = "lenet"
    epochs = 5
    preset = "chip"             # or table = "PATH.h5"; config = "FILE.toml" for the hardware
    config = "../configs/lenet-chip.toml"

    [grid]                      # the axes: every combination is one run
    mode = ["float", "qat", "mixed"]
    seed = [0, 1, 2]

    [evaluate]                  # optional: each run also programmed onto fresh chips
    fresh_chips = [101, 102, 103]

An option (:data:`AXES`) is a :class:`~training.trainer.TrainConfig` field, ``threshold``
(the write threshold, fraction of the weight range), ``qat_noise``, or ``preset``,
``config``, ``table``; paths are relative to the spec's folder. A configuration's
``[surrogate]`` block applies to its runs as in ``train --config``. Every run is checked
before any starts.

The runs go to the local process pool or to a Dask cluster through the calibration's
executor (:func:`calibration.executor.run_jobs`): each in its own folder
``OUT/runs/<id>/`` (its checkpoint, and ``result.json`` once it is done), so that a killed
sweep, run again with ``resume=True``, skips the finished runs and resumes the others from
their last epoch; a failed run is reported by its parameters and the others go on. The
calibration tables are found (or built) in the cache first, from this process; on a Dask
cluster the tables and ``OUT`` must be on a file system the workers share. The results:
``OUT/results.csv`` and ``OUT/results.json`` (a row per run) and plots in ``OUT/plots/``.
``OUT/spec.json`` holds the spec, so that a folder of another spec is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from netlists.config import SurrogateConfig, load_config, load_surrogate_config, preset, read_toml
from netlists.errors import ConfigError
from netlists.files import atomic_write, check_writable_folder
from training.errors import TrainingError
from training.trainer import TrainConfig

__all__ = ["AXES", "Run", "Spec", "load_spec", "run_sweep"]

_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "surrogate")
_WHERE = ("preset", "config", "table")
#: What a spec may set in ``[base]`` or vary in ``[grid]``.
AXES = _TRAIN_FIELDS + ("threshold",) + _WHERE
_TABLES = ("base", "grid", "evaluate")
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class Run:
    """One point of the grid: ``params`` (the axes' values), its configuration and where its
    calibration comes from (``preset`` and ``config``, or ``table``)."""

    index: int
    params: dict[str, Any]
    config: TrainConfig
    preset: str
    hw_config: Path | None
    table: Path | None

    @property
    def run_id(self) -> str:
        text = "-".join(f"{k}={_short(v)}" for k, v in self.params.items()) or "run"
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True, default=str)
                                .encode()).hexdigest()[:8]
        return f"{self.index:03d}-{_slug(text)[:80]}-{digest}"


@dataclass(frozen=True)
class Spec:
    path: Path
    text: str
    axes: tuple[str, ...]
    runs: tuple[Run, ...]
    fresh_chips: tuple[int, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _short(value: Any) -> str:
    return Path(value).stem if isinstance(value, str) and ("/" in value or
                                                           value.endswith(".toml")) \
        else f"{value:g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "=-_." else "_" for c in text)


def _fail(path: Path, message: str, field: str | None = None) -> ConfigError:
    return ConfigError(f"sweep spec {str(path)!r}: {message}", field=field or "spec")


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and check a spec (module docstring): every run's configuration is built here,
    so that a bad value is refused, naming its run, before anything runs."""
    path = Path(path)
    data = read_toml(path)
    for table in data:
        if table not in _TABLES or not isinstance(data[table], dict):
            raise _fail(path, f"[{table}] is not a table a spec takes: use "
                              f"{', '.join(f'[{t}]' for t in _TABLES)}")
    base, grid = dict(data.get("base", {})), dict(data.get("grid", {}))
    for where, block in (("base", base), ("grid", grid)):
        for key in block:
            if key not in AXES:
                raise _fail(path, f"[{where}] {key!r} is not an option a run takes; choose "
                                  f"from {', '.join(AXES)}", field=f"{where}.{key}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"[grid] {key} = {values!r} must be a non-empty list of "
                              "values", field=f"grid.{key}")
        if key in base:
            raise _fail(path, f"{key!r} is in [base] and in [grid]: keep one",
                        field=f"grid.{key}")
    evaluate = data.get("evaluate", {})
    unknown = set(evaluate) - {"fresh_chips"}
    if unknown:
        raise _fail(path, f"[evaluate] takes only fresh_chips, not {sorted(unknown)}",
                    field="evaluate")
    chips = evaluate.get("fresh_chips", [])
    if not isinstance(chips, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in chips):
        raise _fail(path, f"[evaluate] fresh_chips = {chips!r} must be a list of chip seeds "
                          "(whole numbers >= 0)", field="evaluate.fresh_chips")
    axes = tuple(grid)
    runs = []
    for index, values in enumerate(itertools.product(*grid.values())):
        params = dict(zip(axes, values))
        runs.append(_run(path, index, {**base, **params}, params))
    if len({json.dumps(r.params, sort_keys=True, default=str) for r in runs}) != len(runs):
        raise _fail(path, "[grid] lists a value twice", field="grid")
    return Spec(path=path, text=path.read_text(encoding="utf-8"), axes=axes,
                runs=tuple(runs), fresh_chips=tuple(chips))


def _run(path: Path, index: int, options: dict[str, Any], params: dict[str, Any]) -> Run:
    where = f"run {index} ({json.dumps(params, default=str)})"
    folder = path.parent
    if "table" in options and ({"preset", "config"} & set(options)):
        raise _fail(path, f"{where}: table and preset/config both say where the calibration "
                          "comes from: give one", field="table")
    resolve = {}
    for key in ("config", "table"):
        if key in options:
            file = (folder / options[key]).resolve() if isinstance(options[key], str) else None
            if file is None or not file.is_file():
                raise _fail(path, f"{where}: {key} = {options[key]!r} is not a file "
                                  f"(paths are relative to the spec's folder)", field=key)
            resolve[key] = file
    train_opts = {k: v for k, v in options.items() if k in _TRAIN_FIELDS}
    try:
        surrogate = load_surrogate_config(resolve["config"]) if "config" in resolve \
            else SurrogateConfig()
        if "threshold" in options:
            surrogate = dataclasses.replace(surrogate, write_threshold=options["threshold"])
        cfg = TrainConfig(**train_opts, surrogate=surrogate)
        name = options.get("preset", "chip")
        hw = preset(name)
        if "config" in resolve:
            load_config(resolve["config"], base=hw)
    except (ConfigError, TypeError) as err:
        raise _fail(path, f"{where}: {err}", field=getattr(err, "field", None)) from None
    return Run(index=index, params=params, config=cfg, preset=name,
               hw_config=resolve.get("config"), table=resolve.get("table"))


# ---- running ----------------------------------------------------------------------------
def _run_job(job: Any) -> dict[str, np.ndarray]:
    """One run in a worker: train (resuming its checkpoint), evaluate on the fresh chips,
    write its ``result.json``; the result as a JSON string."""
    import torch

    from calibration.store import open_table
    from training.trainer import evaluate, train

    p = job.point
    if p["threads"]:
        torch.set_num_threads(p["threads"])
    cfg = TrainConfig(**p["config"])
    out = Path(p["out"])
    table = open_table(p["table"]) if p["table"] else None
    res = train(cfg, out=out, table=table if cfg.needs_table else None,
                resume=(out / "checkpoint.pt").exists(), device="cpu", stream=io.StringIO())
    row = res.summary()
    fresh = {str(s): evaluate(res.checkpoint, cfg.dataset, table=table, fresh_chip=s,
                              device="cpu")["test_accuracy"] for s in p["fresh_chips"]}
    row["fresh_chip_accuracies"] = fresh
    row["fresh_chip_accuracy"] = float(np.mean(list(fresh.values()))) if fresh else None
    text = json.dumps(row, default=str)
    atomic_write(out / RESULT_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return {"result": np.array(text)}


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    table: Path
    plots: list[Path]
    failed: int

    def summary(self) -> dict[str, Any]:
        return {"runs": self.rows, "table": str(self.table),
                "plots": [str(p) for p in self.plots], "failed": self.failed}


def _tables(spec: Spec, workers: int, scheduler: str | None) -> dict[int, str | None]:
    """Per run, the calibration table's path (None where it needs none), found or built in
    the cache here."""
    from calibration.calibrate import calibrate

    found: dict[tuple[str, str | None], str] = {}
    paths: dict[int, str | None] = {}
    for run in spec.runs:
        if not run.config.needs_table and not spec.fresh_chips:
            paths[run.index] = None
        elif run.table is not None:
            paths[run.index] = str(run.table)
        else:
            key = (run.preset, str(run.hw_config) if run.hw_config else None)
            if key not in found:
                hw = preset(run.preset)
                if run.hw_config is not None:
                    hw, _ = load_config(run.hw_config, base=hw)
                found[key] = str(calibrate(hw, preset=run.preset, workers=workers,
                                           scheduler=scheduler).path)
            paths[run.index] = found[key]
    return paths


def run_sweep(spec: Spec, *, out: str | os.PathLike[str], workers: int = 2,
              scheduler: str | None = None, resume: bool = False, plots: bool = True,
              progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Run every run of ``spec`` not finished in ``out`` (module docstring)."""
    from calibration.executor import Job, run_jobs

    out = Path(out)
    check_writable_folder(out, what="--out")
    marker = out / "spec.json"
    if marker.exists():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved.get("digest") != spec.digest:
            raise TrainingError(f"{out} holds the results of another spec "
                                f"({saved.get('path')}); choose another --out (nothing was "
                                "overwritten)")
        if not resume:
            raise TrainingError(f"{out} holds this spec's sweep: pass --resume to continue "
                                "it, or choose another --out (nothing was overwritten)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"path": str(spec.path), "digest": spec.digest, "spec": spec.text})
        atomic_write(marker, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    tables = _tables(spec, workers, scheduler)
    # A local pool's workers share the cores; a run in this process keeps its threads.
    threads = max(1, (os.cpu_count() or 1) // workers) if workers and not scheduler else None
    pending = [r for r in spec.runs
               if not (out / "runs" / r.run_id / RESULT_NAME).exists()]
    jobs = [Job("run", r.index, {"config": r.config.to_dict(), "table": tables[r.index],
                                 "out": str(out / "runs" / r.run_id), "threads": threads,
                                 "fresh_chips": list(spec.fresh_chips)})
            for r in pending]
    failures = run_jobs(jobs, _run_job, workers=workers, scheduler=scheduler, retries=0,
                        max_failures=len(jobs), on_result=lambda job, res: None,
                        progress=progress)
    errors = {f.job.index: f.error.strip().splitlines()[0] if f.error.strip() else "failed"
              for f in failures}
    rows = []
    for run in spec.runs:
        row: dict[str, Any] = {"run": run.run_id, **run.params, "mode": run.config.mode,
                               "threshold": run.config.threshold, "seed": run.config.seed}
        done = out / "runs" / run.run_id / RESULT_NAME
        if run.index in errors or not done.exists():
            row.update(status="failed", error=errors.get(run.index, "no result"))
        else:
            row.update(status="done", **_result_fields(json.loads(done.read_text("utf-8"))))
        rows.append(row)
    table = _write_tables(out, rows)
    written = _plots(rows, spec, out / "plots") if plots else []
    return SweepResult(rows=rows, table=table, plots=written, failed=len(errors))


_KEEP = ("test_accuracy", "fresh_chip_accuracy", "fresh_chip_accuracies", "device_writes",
         "write_pulses", "writes_per_device_mean", "writes_per_device_max", "epochs",
         "seconds_per_epoch", "table_hash")


def _result_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in _KEEP}


def _write_tables(out: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                         for k, v in row.items()})
    table = out / "results.csv"
    atomic_write(table, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))
    text = json.dumps(rows, indent=1, default=str)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return table


def _plots(rows: list[dict[str, Any]], spec: Spec, folder: Path) -> list[Path]:
    """Accuracy (and fresh-chip accuracy) and device writes against the first numeric axis
    that is not the seed (else the first axis), one line per combination of the others,
    mean and spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netlists.files import save_png

    done = [r for r in rows if r["status"] == "done"]
    axes = [a for a in spec.axes if a != "seed"]
    if not done or not axes:
        return []
    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    x_axis = next((a for a in axes if all(is_number(r[a]) for r in done)), axes[0])
    others = [a for a in axes if a != x_axis]
    xs = list(dict.fromkeys(r[x_axis] for r in done))
    numeric = all(is_number(x) for x in xs)
    if numeric:
        xs.sort()
    pos = {x: (x if numeric else i) for i, x in enumerate(xs)}
    fig, (acc_ax, wr_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(tuple(r[o] for o in others), []).append(r)
    for key, members in groups.items():
        label = ", ".join(f"{o}={_short(v)}" for o, v in zip(others, key)) or "runs"
        for ax, field, style in ((acc_ax, "test_accuracy", "-o"),
                                 (acc_ax, "fresh_chip_accuracy", "--s"),
                                 (wr_ax, "device_writes", "-o")):
            pts = []
            for x in xs:
                vals = [m[field] for m in members if m[x_axis] == x and m[field] is not None]
                if vals:
                    pts.append((pos[x], float(np.mean(vals)), float(np.std(vals))))
            if pts:
                px, py, pe = zip(*pts)
                ax.errorbar(px, py, yerr=pe, fmt=style, capsize=3,
                            label=label + (" (fresh chips)" if "fresh" in field else ""))
    for ax, ylabel in ((acc_ax, "test accuracy"), (wr_ax, "device writes")):
        ax.set(xlabel=x_axis, ylabel=ylabel)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.legend(fontsize=7)
    seeds = len({r["seed"] for r in done})
    fig.suptitle(f"{spec.path.name}: {len(done)} runs, mean and spread over {seeds} "
                 f"seed{'s' if seeds != 1 else ''}", fontsize=10)
    fig.tight_layout()
    return [save_png(fig, folder / "sweep.png")]
