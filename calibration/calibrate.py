"""Run a calibration: every surface's SPICE jobs, persisted as they finish, stored in HDF5.

``calibrate`` is what ``circuitsim calibrate`` runs. A calibration is identified by the hash
of everything that determines its result (schema version, hardware configuration, the
solver's step settings, every surface's sweep grid and representative netlist texts, the
ngspice version); its file is ``<preset>-<hash[:16]>.h5`` in the cache directory (or where
``out`` says). Asking again for a calibration whose file exists and validates is a cache hit
and solves nothing. Otherwise, under a lock on the file (two processes asking for the same
calibration wait for each other instead of both writing it; the one that waits says on
stderr which process it waits for, then every minute how long it has waited), the jobs still
missing from the ``.parts`` directory beside the file are solved, each persisted as it
completes; when all are done the surfaces are assembled and the table written atomically,
and the parts removed. A killed or interrupted calibration therefore resumes where it
stopped and never leaves a complete-looking file behind; Ctrl-C stops its workers at once
and raises KeyboardInterrupt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from calibration.executor import Job, run_jobs
from calibration.store import (SCHEMA_VERSION, FileLock, PartialResults, content_hash,
                               default_cache_dir, open_table, write_table)
from calibration.surfaces import SURFACE_NAMES, get_surface
from calibration.worker import SPICE_RUNS_KEY
from netlists.config import PRESETS, HardwareConfig, SolverConfig
from netlists.errors import ConfigError, TableError

__all__ = ["CalibrationResult", "calibrate", "calibration_key", "calibration_path",
           "SPICE_RUNS_KEY"]



@dataclass(frozen=True)
class CalibrationResult:
    path: Path
    surfaces: list[str]
    spice_runs: int
    seconds: float
    cache_hit: bool
    content_hash: str


def _solver_fields(solver: SolverConfig) -> dict[str, Any]:
    """The solver settings that change results (steps), not the ones that only drive ngspice."""
    return {"steps_per_bit": solver.steps_per_bit, "steps_per_pulse": solver.steps_per_pulse}


def _manifest(hw: HardwareConfig, solver: SolverConfig, preset: str, surfaces: Sequence[Any],
              grids: Mapping[str, Any], ngspice_version: int) -> dict[str, Any]:
    netlists = {}
    for s in surfaces:
        texts = s.netlists(hw, grids[s.name])
        netlists[s.name] = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    return {
        "schema_version": SCHEMA_VERSION,
        "preset": preset,
        "hardware": hw.to_dict(),
        "solver": _solver_fields(solver),
        "surfaces": [s.name for s in surfaces],
        "grids": {name: dataclasses.asdict(g) for name, g in grids.items()},
        "netlists": netlists,
        "ngspice_version": ngspice_version,
    }


def calibration_path(out: str | Path | None, preset: str, key: str) -> Path:
    """Where a calibration lives: ``out`` if it names an ``.h5`` file, else a file in ``out``
    (default: the user cache directory)."""
    if out is not None and Path(out).suffix.lower() in (".h5", ".hdf5"):
        return Path(out)
    folder = Path(out) if out is not None else default_cache_dir()
    return folder / f"{preset}-{key[:16]}.h5"


def _solve(context: Mapping[str, Any], job: Job) -> dict[str, np.ndarray]:
    """Runs in a worker: one job of one surface (see :mod:`calibration.worker`)."""
    from calibration.worker import run_job

    return dict(run_job({**context, "surface": job.surface,
                         "grid": context["grids"][job.surface], "point": job.point}))


def _progress_printer(stream=sys.stderr) -> Callable[[int, int], None]:
    """A progress bar redrawn in place on a terminal; one line per 10% into a log file."""
    start = time.perf_counter()
    tty = getattr(stream, "isatty", lambda: False)()
    last_decile = [-1]

    def show(done: int, total: int) -> None:
        if not tty:
            decile = 10 * done // max(total, 1)
            if decile != last_decile[0]:
                last_decile[0] = decile
                stream.write(f"calibrate: {done}/{total} jobs, "
                             f"{time.perf_counter() - start:.0f} s\n")
                stream.flush()
            return
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - start
        stream.write(f"\rcalibrate [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"jobs, {elapsed:.0f} s")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def _waiting_printer(name: str, lock: Path) -> Callable[[int | None, float], None]:
    """``FileLock``'s ``on_wait``: on stderr, who builds calibration ``name`` and that this
    process waits for it; then, at each report, how long it has waited."""
    said = [False]

    def say(holder: int | None, waited_s: float) -> None:
        who = f"process {holder}" if holder is not None else "another process"
        if not said[0]:
            said[0] = True
            text = (f"calibrate: calibration {name} is being built by {who} (lock {lock}); "
                    f"waiting for it to finish ...")
        else:
            text = (f"calibrate: still waiting for {who} to finish calibration {name} "
                    f"({waited_s:.0f} s so far)")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    return say


def _identify(hw: HardwareConfig, preset: str, solver: SolverConfig,
              surfaces: Sequence[str] | None) -> tuple[list[str], list[Any], dict[str, Any],
                                                      Any, dict[str, Any], str]:
    """(surface names, surfaces, grids, ngspice facts, manifest, content hash)."""
    from circuitsim.runner import check_ngspice

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    names = list(surfaces) if surfaces is not None else list(SURFACE_NAMES)
    if not names:
        raise ConfigError("no surfaces to calibrate")
    objs = [get_surface(n) for n in names]
    grids = {s.name: s.grid(preset) for s in objs}
    info = check_ngspice()
    manifest = _manifest(hw, solver, preset, objs, grids, info.version)
    return names, objs, grids, info, manifest, content_hash(manifest)


def calibration_key(hw: HardwareConfig, *, preset: str = "chip",
                    solver: SolverConfig | None = None,
                    surfaces: Sequence[str] | None = None) -> str:
    """The content hash a calibration of ``hw`` on ``preset``'s grids has with this ngspice
    and these netlists (what :func:`calibrate` names and checks its table by); solves
    nothing."""
    return _identify(hw, preset, solver or SolverConfig(), surfaces)[-1]


def calibrate(hw: HardwareConfig, *, preset: str = "chip", solver: SolverConfig | None = None,
              surfaces: Sequence[str] | None = None, out: str | Path | None = None,
              workers: int = 2, scheduler: str | None = None, force: bool = False,
              max_failures: int = 0, retries: int = 2,
              progress: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """Build (or find in the cache) the calibration of ``hw`` on ``preset``'s sweep grids."""
    started = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers = {workers!r} must be a whole number >= 0")
    solver = solver or SolverConfig()
    names, objs, grids, info, manifest, key = _identify(hw, preset, solver, surfaces)
    path = calibration_path(out, preset, key)
    path.parent.mkdir(parents=True, exist_ok=True)

    def hit() -> CalibrationResult | None:
        if force or not path.exists():
            return None
        table = open_table(path, expected_hash=key)
        return CalibrationResult(path=path, surfaces=list(table.surfaces),
                                 spice_runs=int(table.attrs.get("spice_runs", 0)),
                                 seconds=time.perf_counter() - started, cache_hit=True,
                                 content_hash=key)

    found = hit()
    if found is not None:
        return found
    lock = path.with_name(path.name + ".lock")
    with FileLock(lock, on_wait=_waiting_printer(path.stem, lock)):
        found = hit()  # another process may have finished it while we waited
        if found is not None:
            return found
        parts = PartialResults(path.with_name(path.name + ".parts"), key=key)
        points = {s.name: list(s.points(hw, grids[s.name])) for s in objs}
        # Surfaces with few points first: their jobs are the long ones (whole write-verify
        # runs, tile solves), and starting them early keeps every worker busy to the end.
        order = sorted(names, key=lambda name: len(points[name]))
        jobs = [Job(name, i, p) for name in order for i, p in enumerate(points[name])]
        done = {name: parts.done(name) for name in names}
        todo = [j for j in jobs if j.index not in done[j.surface]]
        context = {
            "hardware": hw.to_dict(),
            "solver": dataclasses.asdict(solver),
            "grids": {name: dataclasses.asdict(g) for name, g in grids.items()},
        }
        show = progress or _progress_printer()
        offset = len(jobs) - len(todo)
        show(offset, len(jobs))
        run_jobs(todo, functools.partial(_solve, context), workers=workers,
                 scheduler=scheduler, retries=retries, max_failures=max_failures,
                 on_result=lambda job, result: parts.save(job.surface, job.index, job.point,
                                                          result),
                 progress=lambda d, t: show(offset + d, len(jobs)))

        spice_runs = 0
        data = {}
        for s in objs:
            results = []
            for i, p in enumerate(points[s.name]):
                r = dict(parts.load(s.name, i, p))
                spice_runs += int(np.asarray(r.pop(SPICE_RUNS_KEY, 0)).sum())
                results.append(r)
            data[s.name] = s.assemble(hw, grids[s.name], points[s.name], results)
        seconds = time.perf_counter() - started
        write_table(path, surfaces=data, attrs={
            "content_hash": key,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": seconds,
            "spice_runs": spice_runs,
            "jobs": len(jobs),
            "preset": preset,
            "ngspice_version": info.version,
            "manifest_json": _json(manifest),
        })
        parts.clear()
    try:
        open_table(path, expected_hash=key)
    except TableError as err:  # pragma: no cover - would be a bug in write_table
        raise TableError(f"the table just written does not validate: {err}") from err
    return CalibrationResult(path=path, surfaces=names, spice_runs=spice_runs, seconds=seconds,
                             cache_hit=False, content_hash=key)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)
