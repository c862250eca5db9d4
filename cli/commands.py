"""The subcommands: each reads its options, calls the layers that do the work, and prints
the result (``--json``: one JSON object as the last line of stdout; logs on stderr).

No domain logic lives here: what a command computes is a function of the layer it belongs
to (``circuitsim``, ``calibration``, ``training``); this module checks the options against
each other, checks where results go before the work, and shapes the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from netlists.config import (HardwareConfig, SolverConfig, SurrogateConfig, load_config,
                             load_surrogate_config, preset)
from netlists.errors import CircuitSimError, ConfigError, OutputError
from netlists.files import check_writable_folder

DEFAULT_PRESET = "chip"


def hardware(args: argparse.Namespace) -> tuple[HardwareConfig, SolverConfig]:
    hw = preset(args.preset or DEFAULT_PRESET)
    solver = SolverConfig()
    if getattr(args, "config", None):
        hw, solver = load_config(args.config, base=hw)
    rows, cols = getattr(args, "rows", None), getattr(args, "cols", None)
    if rows is not None or cols is not None:
        hw = hw.replace(array={"rows": rows if rows is not None else hw.array.rows,
                               "cols": cols if cols is not None else hw.array.cols})
    return hw, solver


def surrogate_config(args: argparse.Namespace) -> SurrogateConfig:
    """The ``[surrogate]`` block of ``--config`` (defaults without one), with ``--threshold``
    applied when given."""
    found = load_surrogate_config(args.config) if getattr(args, "config", None) \
        else SurrogateConfig()
    threshold = getattr(args, "threshold", None)
    if threshold is not None:
        try:
            found = dataclasses.replace(found, write_threshold=threshold)
        except ConfigError as err:
            err.field = "threshold"
            raise
    return found


def emit(args: argparse.Namespace, payload: dict[str, Any], summary: str) -> None:
    if args.json:
        print(summary, file=sys.stderr)
        print(json.dumps(payload))
    else:
        print(summary)


def _output_folder(path: Path, option: str) -> Path:
    """``path``'s folder for a file option (``--plot x.png``), checked writable now."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a folder: name the file to write",
                          field=option)
    return check_writable_folder(path.parent, what=option)


def _keep_despite_plot(payload: dict[str, Any], err: Exception) -> int:
    """A plot failed after the work was done: the results are still printed; status 1."""
    payload["plot_error"] = str(err)
    print(f"circuitsim: error: the plot could not be written ({err}); the results below "
          "are complete", file=sys.stderr)
    return 1


def open_runner(solver: SolverConfig):
    from circuitsim.runner import Runner, check_ngspice

    check_ngspice()
    return Runner(solver)


# ---- device pulses ----------------------------------------------------------------------
def cmd_device_pulses(args: argparse.Namespace) -> None:
    from circuitsim.device import simulate_pulses

    hw, solver = hardware(args)
    with open_runner(solver) as runner:
        res = simulate_pulses(hw, args.set, args.reset, runner=runner,
                              amplitude_v=args.amplitude, width_s=args.width,
                              initial_us=args.initial_us, seed=args.seed, solver=solver)
    g = res.conductance_us
    payload = {
        "conductance_us": [round(float(v), 6) for v in g],
        "device_conductance_us": [round(float(v), 6) for v in res.device_conductance_us],
        "state": [round(float(v), 8) for v in res.state],
        "read_voltage_v": res.read_voltage_v,
        "set_pulses": args.set,
        "reset_pulses": args.reset,
        "set_amplitude_v": next((p.amplitude_v for p in res.pulses if p.kind == "set"), None),
        "reset_amplitude_v": next((p.amplitude_v for p in res.pulses if p.kind == "reset"),
                                  None),
        "width_s": res.pulses[0].width_s if res.pulses else None,
        "seed": args.seed,
        "max_temperature_rise_k": res.max_temperature_rise_k,
        "solve_seconds": res.solve_seconds,
    }
    summary = (f"1T1R cell: {args.set} SET + {args.reset} RESET pulses; conductance "
               f"{g[0]:.3f} uS -> {g[min(args.set, len(g) - 1)]:.3f} uS after SET -> "
               f"{g[-1]:.3f} uS at the end ({res.solve_seconds:.2f} s in ngspice)")
    emit(args, payload, summary)


# ---- device retention -------------------------------------------------------------------
def cmd_device_retention(args: argparse.Namespace) -> None:
    from circuitsim.retention import plot_retention, simulate_retention

    hw, solver = hardware(args)
    levels = None
    if args.levels is not None:
        try:
            levels = [int(v) for v in args.levels.split(",")]
        except ValueError:
            raise ConfigError(f"--levels {args.levels!r} must be comma-separated level "
                              "indices, e.g. 0,5,15", field="--levels") from None
    if args.plot is not None:
        _output_folder(args.plot, "--plot")
    with open_runner(solver) as runner:
        res = simulate_retention(hw, runner=runner, hours=args.hours, levels=levels,
                                 temperature_k=args.temperature)
    if args.plot is not None:
        plot_retention(res, args.plot)
    drift = res.drift_levels
    payload = {
        "levels": res.levels.tolist(),
        "times_s": [float(v) for v in res.times_s],
        "conductance_us": [[round(float(v), 6) for v in row] for row in res.conductance_us],
        "drift_levels": [round(float(v), 6) for v in drift],
        "level_spacing_us": res.spacing_us,
        "hours": args.hours,
        "temperature_k": res.temperature_k,
        "plot": None if args.plot is None else str(args.plot),
        "solve_seconds": res.solve_seconds,
    }
    worst = int(np.argmax(np.abs(drift)))
    emit(args, payload, f"{len(res.levels)} levels after {args.hours:g} h at "
                        f"{res.temperature_k:g} K: largest drift {drift[worst]:+.3f} level "
                        f"spacings (level {int(res.levels[worst])})")


# ---- device fit -------------------------------------------------------------------------
def _fit_target(args: argparse.Namespace) -> Path:
    out = args.out if args.out is not None else Path(f"{Path(args.data).stem}-fit.toml")
    _output_folder(out, "--out")
    return out


def cmd_device_fit(args: argparse.Namespace) -> int:
    from circuitsim.device_fit import confirm_in_spice, fit_device, plot_fit, write_fit
    from circuitsim.measured import read_measured

    hw, solver = hardware(args)
    names = None if args.params is None else [n.strip() for n in args.params.split(",")]
    out = _fit_target(args)
    if args.plot is not None:
        _output_folder(args.plot, "--plot")
    data = read_measured(args.data, hw)
    with open_runner(solver) as runner:
        result = fit_device(data, hw, runner=runner, params=names)
        confirm_in_spice(result, data, runner=runner)
    preset_name = args.preset or DEFAULT_PRESET
    payload = {"config": str(write_fit(out, result, preset=preset_name, base=args.config)),
               "data": str(args.data), "preset": preset_name, **result.summary()}
    status = 1 if result.warnings else 0
    if args.plot:
        try:
            payload["plot"] = str(plot_fit(result, data, args.plot))
        except (OSError, CircuitSimError) as err:
            status = _keep_despite_plot(payload, err)
    for warning in result.warnings:
        print(f"circuitsim: warning: {warning}", file=sys.stderr)
    for note in result.notes:
        print(f"circuitsim: note: {note}", file=sys.stderr)
    lines = [f"fitted {len(result.params)} parameters to {payload['devices']} device(s), "
             f"{payload['pulses']} pulses in {result.seconds:.1f} s: one-step rms "
             f"{result.rms_us:.3f} uS (max {result.max_us:.3f}); free-running trains rms "
             f"{result.trains_rms_us:.3f} uS, in ngspice {result.spice_rms_us:.3f} uS"]
    for name, value in result.params.items():
        lines.append(f"  {name:18s} {value:11.4g}  relative error "
                     f"{result.relative_error[name]:8.2g}"
                     + ("" if result.determined[name] else "  (not determined by the data)"))
    for name, spread in result.spread.items():
        if spread["estimated"]:
            lines.append(f"  {name:18s} {spread['value']:11.4g}  error {spread['error']:.2g}")
    if result.read_noise_us is not None:
        lines.append(f"  {'read noise, uS':18s} {result.read_noise_us:11.4g}")
    lines.append(f"wrote {payload['config']} (use it with --preset {preset_name})")
    emit(args, payload, "\n".join(lines))
    return status


def cmd_device_synthesize(args: argparse.Namespace) -> None:
    from circuitsim.device_fit import synthesize
    from circuitsim.measured import write_measured

    hw, solver = hardware(args)
    _output_folder(args.out, "--out")
    with open_runner(solver) as runner:
        data = synthesize(hw, runner=runner, devices=args.devices, seed=args.seed,
                          read_noise_us=args.read_noise_us)
    write_measured(args.out, data)
    payload = {"data": str(args.out), "devices": len(data.devices), "pulses": data.pulses,
               "reads": data.reads, "seed": args.seed, "read_noise_us": args.read_noise_us}
    emit(args, payload, f"wrote {args.out}: {data.pulses} pulses and {data.reads} reads of "
                        f"{len(data.devices)} device(s), solved in ngspice")


# ---- array ------------------------------------------------------------------------------
def cmd_array(args: argparse.Namespace) -> None:
    from circuitsim.tile import ideal_accumulated_v, ideal_codes, random_tile, solve_tile

    hw, solver = hardware(args)
    with open_runner(solver) as runner:
        states, g, x = random_tile(hw, runner=runner, seed=args.seed)
        res = solve_tile(hw, states, x, runner=runner, solver=solver)
    ideal = ideal_codes(hw, g, x)
    diff = res.codes - ideal
    payload = {
        "rows": hw.array.rows,
        "cols": hw.array.cols,
        "seed": args.seed,
        "inputs": [int(v) for v in x],
        "codes": [int(v) for v in res.codes],
        "ideal_codes": [int(v) for v in ideal],
        "accumulated_v": [float(v) for v in res.accumulated_v],
        "ideal_accumulated_v": [float(v) for v in ideal_accumulated_v(hw, g, x)],
        "mean_code_error": float(np.mean(diff)),
        "max_abs_code_error": int(np.max(np.abs(diff))),
        "solve_seconds": res.solve_seconds,
    }
    summary = (f"{hw.array.rows}x{hw.array.cols} tile solved in ngspice in "
               f"{res.solve_seconds:.2f} s; codes vs ideal crossbar: mean error "
               f"{np.mean(diff):+.2f}, max |error| {np.max(np.abs(diff))} codes")
    emit(args, payload, summary)


# ---- calibrate / report -----------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> None:
    from calibration.calibrate import calibrate
    from calibration.store import default_cache_dir

    hw, solver = hardware(args)
    if args.out is None:
        check_writable_folder(default_cache_dir(), what="the calibration cache")
    elif args.out.suffix.lower() in (".h5", ".hdf5"):
        _output_folder(args.out, "--out")
    else:
        check_writable_folder(args.out, what="--out")
    res = calibrate(hw, preset=args.preset or DEFAULT_PRESET, solver=solver, out=args.out,
                    workers=args.workers,
                    scheduler=args.scheduler, force=args.force,
                    surfaces=args.surfaces.split(",") if args.surfaces else None)
    payload = {
        "path": str(res.path),
        "surfaces": res.surfaces,
        "spice_runs": res.spice_runs,
        "seconds": res.seconds,
        "cache_hit": res.cache_hit,
        "content_hash": res.content_hash,
    }
    what = "found in the cache" if res.cache_hit else \
        f"built from {res.spice_runs} ngspice runs in {res.seconds:.1f} s"
    emit(args, payload, f"calibration {what}: {res.path}")


def cmd_report(args: argparse.Namespace) -> None:
    from calibration.report import write_report

    open_table_option(args.table)  # a bad table is refused before any folder is made
    check_writable_folder(args.out, what="--out")
    paths = write_report(args.table, args.out)
    emit(args, {"plots": [str(p) for p in paths]},
          f"{len(paths)} plots written to {args.out}")


# ---- calibration tables for validate / train / evaluate ----------------------------------
def _given_hardware(args: argparse.Namespace, base_preset: str | None) -> HardwareConfig | None:
    """The hardware that ``--preset``/``--config`` ask for, None when neither was given.

    Without ``--preset`` the fields of ``--config`` apply to ``base_preset`` (a table's own
    preset); both are validated either way."""
    if args.preset is None and args.config is None:
        return None
    hw = preset(args.preset or base_preset or DEFAULT_PRESET)
    if args.config is not None:
        hw, _ = load_config(args.config, base=hw)
    return hw


def _differences(asked: Any, have: Any, prefix: str = "") -> list[str]:
    if isinstance(asked, dict) and isinstance(have, dict):
        return [d for key in sorted(set(asked) | set(have))
                for d in _differences(asked.get(key), have.get(key), f"{prefix}{key}.")]
    return [] if asked == have else [f"{prefix[:-1]} = {asked!r} asked, {have!r} in the table"]


def check_table_matches(args: argparse.Namespace, table: Any) -> None:
    """ConfigError if ``--preset``/``--config`` describe other hardware than ``table``'s."""
    own = table.attrs.get("preset")
    if args.preset is not None and own is not None and args.preset != own:
        raise ConfigError(
            f"--preset {args.preset} contradicts the table {str(table.path)!r}, which was "
            f"calibrated for preset {own!r}: drop --preset, or pass a table built by "
            f"`circuitsim calibrate --preset {args.preset}`", field="preset")
    asked = _given_hardware(args, own)
    if asked is None:
        return
    diff = _differences(asked.to_dict(), table.hardware().to_dict())
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ConfigError(
            f"the table {str(table.path)!r} was calibrated for other hardware than "
            f"--preset/--config ask for ({shown}): drop those options, or calibrate that "
            "hardware with `circuitsim calibrate` and pass its table", field="config")


def open_table_option(path: Path, option: str = "--table"):
    """``open_table(path)``; a TableError says which option named the file."""
    from calibration.store import open_table
    from netlists.errors import TableError

    try:
        return open_table(path)
    except TableError as err:
        err.field = option
        raise


def load_calibration(args: argparse.Namespace, surfaces: list[str] | None = None):
    """The calibration table a command asks for: ``--table PATH`` (checked against any
    ``--preset``/``--config`` given), or ``--preset`` (with ``--config``) from the cache,
    built first when it is missing (with its progress bar); ``surfaces``: only those
    (default all)."""
    from calibration.calibrate import calibrate
    from calibration.store import default_cache_dir, open_table

    if getattr(args, "table", None) is not None:
        table = open_table_option(args.table)
        check_table_matches(args, table)
        return table
    hw, solver = hardware(args)
    check_writable_folder(default_cache_dir(), what="the calibration cache")
    res = calibrate(hw, preset=args.preset or DEFAULT_PRESET, solver=solver,
                    surfaces=surfaces, workers=getattr(args, "workers", 2))
    if not res.cache_hit:
        what = "calibration" if surfaces is None else " and ".join(surfaces) + " surface"
        print(f"{what} built from {res.spice_runs} ngspice runs in {res.seconds:.0f} s: "
              f"{res.path}", file=sys.stderr)
    return open_table(res.path, expected_hash=res.content_hash)


def check_unused_calibration(args: argparse.Namespace, why: str) -> None:
    """Validate ``--table``/``--preset``/``--config`` where the command will not use them
    (a float run), and say so on stderr."""
    if args.table is not None:
        check_table_matches(args, open_table_option(args.table))
    else:
        _given_hardware(args, None)
    if args.table is not None or args.preset is not None or args.config is not None:
        print(f"note: {why}: --table/--preset/--config were checked but are not used",
              file=sys.stderr)


def _case_progress(label: str, what: str = "tiles solved in ngspice"):
    def show(done: int, total: int) -> None:
        print(f"{label}: {done}/{total} {what}", file=sys.stderr, flush=True)
    return show


def cmd_validate(args: argparse.Namespace) -> int:
    from circuitsim.runner import check_ngspice
    from surrogate.validate import plot_validation, validate

    if args.plot is not None:
        _output_folder(args.plot, "--plot")
    table = load_calibration(args)  # the options are checked before ngspice is looked for
    check_ngspice()
    result = validate(table, cases=args.cases, seed=args.seed, rows=args.rows,
                      cols=args.cols, workers=args.workers, method=args.method,
                      progress=_case_progress("validate"))
    payload = result.summary()
    payload["table"] = str(table.path)
    payload["rows"], payload["cols"] = (int(n) for n in result.cases[0].levels.shape)
    status = 0
    if args.plot:
        try:
            payload["plot"] = str(plot_validation(result, args.plot))
        except (OSError, CircuitSimError) as err:
            status = _keep_despite_plot(payload, err)
    summary = (f"surrogate vs ngspice on {payload['cases']} {payload['rows']}x{payload['cols']}"
               f" tiles: rms {payload['rms_lsb']:.3f} LSB, max {payload['max_lsb']:.3f} LSB, "
               f"codes {100 * payload['code_match']:.1f}% identical; ideal crossbar rms "
               f"{payload['ideal_rms_lsb']:.2f} LSB; {payload['speedup']:.3g}x faster per VMM")
    if payload["saturated"] > 0:
        summary += (f"; {100 * payload['saturated']:.0f}% of the columns past the ADC's full "
                    f"scale; clipped to it as the converter sees it: rms "
                    f"{payload['clipped_rms_lsb']:.3f} LSB, max "
                    f"{payload['clipped_max_lsb']:.3f} LSB")
    emit(args, payload, summary)
    return status


# ---- training ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from training.trainer import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, mode=args.mode,
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, surrogate=surrogate_config(args),
                      seed=args.seed, chip_seed=args.chip_seed, range_margin=args.range_margin,
                      read_noise=not args.no_read_noise, programming=args.programming,
                      test_size=args.test_size, qat_noise=args.qat_noise)
    if not cfg.needs_table:
        check_unused_calibration(args, "--mode float trains plain torch on no chip")
    out = args.out or Path("runs") / f"{cfg.model}-{cfg.mode}-seed{cfg.seed}"
    check_writable_folder(out, what="--out")
    if args.plot is not None:
        check_writable_folder(args.plot, what="--plot")
    table = load_calibration(args) if cfg.needs_table else None
    result = train(cfg, out=out, table=table, resume=args.resume, device=args.device)
    payload = result.summary()
    status = 0
    if args.plot:
        from training.plots import plot_run

        try:
            payload["plots"] = [str(p) for p in plot_run(result, args.plot)]
        except (OSError, CircuitSimError) as err:
            status = _keep_despite_plot(payload, err)
    summary = (f"{cfg.model} on {cfg.dataset} ({cfg.mode}): test accuracy "
               f"{100 * result.test_accuracy:.2f}% after {result.epochs} epochs, "
               f"{result.seconds_per_epoch:.1f} s per epoch, {payload['device_writes']} device "
               f"writes; checkpoint {result.checkpoint}")
    emit(args, payload, summary)
    return status


def cmd_sweep(args: argparse.Namespace) -> int:
    from training.sweep import load_spec, run_sweep

    spec = load_spec(args.spec)
    out = args.out or Path("sweeps") / Path(args.spec).stem
    result = run_sweep(spec, out=out, workers=args.workers, scheduler=args.scheduler,
                       resume=args.resume, plots=not args.no_plots,
                       progress=_case_progress("sweep", "runs finished"))
    payload = result.summary()
    done = [r for r in result.rows if r["status"] == "done"]
    lines = [f"{len(done)} of {len(result.rows)} runs done ({result.failed} failed); "
             f"results in {result.table}"]
    for row in result.rows:
        axes = ", ".join(f"{a}={row[a]}" for a in spec.axes)
        if row["status"] == "done":
            fresh = row["fresh_chip_accuracy"]
            lines.append(f"  {axes}: test {100 * row['test_accuracy']:.2f}%"
                         + (f", fresh chips {100 * fresh:.2f}%" if fresh is not None else "")
                         + f", {row['device_writes']} device writes")
        else:
            lines.append(f"  {axes}: FAILED: {row['error']}")
    emit(args, payload, "\n".join(lines))
    return 1 if result.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.trainer import DIGITAL_MODES, evaluate, load_checkpoint

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CircuitSimError as err:
        err.field = "checkpoint"
        raise
    mode = ckpt["config"]["mode"]
    analog = mode not in DIGITAL_MODES
    table = None
    if not analog and args.fresh_chip is None:
        check_unused_calibration(args, f"a {mode} checkpoint is evaluated on no chip unless "
                                       "--fresh-chip is given")
    elif args.table is not None or not analog:
        table = load_calibration(args)
    elif args.preset is not None or args.config is not None:
        saved = ckpt.get("table_path")
        if saved and Path(saved).is_file():  # else evaluate() says the table is missing
            table = open_table_option(Path(saved), "--checkpoint")
            check_table_matches(args, table)
    result = evaluate(args.checkpoint, args.dataset, table=table, fresh_chip=args.fresh_chip,
                      device=args.device, after_s=args.after,
                      temperature_k=args.temperature, loaded=ckpt)
    where = f"a fresh chip (seed {args.fresh_chip})" if args.fresh_chip is not None else \
        ("the training chip" if analog else f"{mode} weights")
    if args.after is not None:
        where += f", {args.after:g} s after programming at {result['temperature_k']:g} K"
    emit(args, result, f"test accuracy {100 * result['test_accuracy']:.2f}% on {where}")
