"""The ``circuitsim`` command line.

With ``--json`` every subcommand prints exactly one JSON object as the last line of stdout;
logs and progress go to stderr. The keys named in the project's issues are a contract.
This is the only module that knows every layer; heavy layers are imported inside the
subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from netlists.config import HardwareConfig, SolverConfig, load_config, preset
from netlists.errors import CircuitSimError, ConfigError


def _hardware(args: argparse.Namespace) -> tuple[HardwareConfig, SolverConfig]:
    hw = preset(args.preset)
    solver = SolverConfig()
    if getattr(args, "config", None):
        hw, solver = load_config(args.config, base=hw)
    rows, cols = getattr(args, "rows", None), getattr(args, "cols", None)
    if rows is not None or cols is not None:
        hw = hw.replace(array={"rows": rows if rows is not None else hw.array.rows,
                               "cols": cols if cols is not None else hw.array.cols})
    return hw, solver


def _emit(args: argparse.Namespace, payload: dict[str, Any], summary: str) -> None:
    if args.json:
        print(summary, file=sys.stderr)
        print(json.dumps(payload))
    else:
        print(summary)


def _runner(solver: SolverConfig):
    from circuitsim.runner import Runner, check_ngspice

    check_ngspice()
    return Runner(solver)


# ---- device pulses ----------------------------------------------------------------------
def cmd_device_pulses(args: argparse.Namespace) -> None:
    from circuitsim.device import simulate_pulses

    hw, solver = _hardware(args)
    with _runner(solver) as runner:
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
    _emit(args, payload, summary)


# ---- array ------------------------------------------------------------------------------
def random_tile(hw: HardwareConfig, *, runner, seed: int, levels: int = 128
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random map of programmable levels and a random input vector.

    Returns (states, cell conductances in S, inputs). The ``levels`` programmable levels are
    evenly spaced over the 1T1R cell's read-conductance window, solved in ngspice.
    """
    from circuitsim.device import cell_conductance_curve

    rng = np.random.default_rng(seed)
    n_grid, g_grid = cell_conductance_curve(hw, runner=runner)
    level_g = np.linspace(g_grid[0], g_grid[-1], levels)
    pick = rng.integers(0, levels, size=(hw.array.rows, hw.array.cols))
    g = level_g[pick]
    states = np.interp(g, g_grid, n_grid)
    x = rng.integers(0, 2 ** hw.drive.input_bits, size=hw.array.rows)
    return states, g, x


def cmd_array(args: argparse.Namespace) -> None:
    from circuitsim.tile import ideal_accumulated_v, ideal_codes, solve_tile

    hw, solver = _hardware(args)
    with _runner(solver) as runner:
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
    _emit(args, payload, summary)


# ---- demo -------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the embedded default: characterize a device, solve a tile in SPICE,
    build (or find in the cache) the calibration tables, check the surrogate tile against
    ngspice, and train LeNet with the mixed-precision scheme on the calibrated tiles."""
    import tempfile

    from calibration.calibrate import calibrate
    from calibration.store import open_table
    from calibration.validate import validate
    from circuitsim.device import simulate_pulses
    from circuitsim.tile import ideal_codes, solve_tile
    from training.trainer import TrainConfig, train

    hw, solver = _hardware(args)
    started = time.perf_counter()
    with _runner(solver) as runner:
        print("[1/5] 1T1R cell: 100 SET then 100 RESET pulses in ngspice ...", file=sys.stderr)
        dev = simulate_pulses(hw, 100, 100, runner=runner, seed=args.seed, solver=solver)
        g = dev.conductance_us
        print(f"      conductance {g[0]:.2f} -> {g[100]:.2f} -> {g[-1]:.2f} uS; "
              f"largest step {np.max(np.abs(np.diff(g))):.3f} uS", file=sys.stderr)
        print(f"[2/5] {hw.array.rows}x{hw.array.cols} tile: random levels and 8-bit inputs, "
              "bit-serial transient in ngspice ...", file=sys.stderr)
        states, gmap, x = random_tile(hw, runner=runner, seed=args.seed)
        tile = solve_tile(hw, states, x, runner=runner, solver=solver)
    ideal = ideal_codes(hw, gmap, x)
    diff = tile.codes - ideal
    print(f"      {tile.solve_seconds:.2f} s in ngspice; ADC codes vs an ideal crossbar: "
          f"mean {np.mean(diff):+.2f}, max |error| {np.max(np.abs(diff))} codes "
          "(IR drop, transistor and TIA)", file=sys.stderr)
    print(f"[3/5] calibration tables ({args.preset}) from ngspice sweeps ...", file=sys.stderr)
    cal = calibrate(hw, preset=args.preset, solver=solver, workers=args.workers)
    print(f"      {'found in the cache' if cal.cache_hit else 'built'}: {cal.path} "
          f"({cal.spice_runs} ngspice runs, {cal.seconds:.1f} s)", file=sys.stderr)
    table = open_table(cal.path, expected_hash=cal.content_hash)
    print("[4/5] surrogate tile vs whole-tile ngspice solves (4 held-out cases) ...",
          file=sys.stderr)
    val = validate(table, cases=4, seed=args.seed, workers=args.workers).summary()
    print(f"      accumulated voltage within {val['rms_lsb']:.3f} LSB rms ({val['max_lsb']:.3f}"
          f" max) of ngspice, {100 * val['code_match']:.1f}% identical codes; ideal crossbar "
          f"{val['ideal_rms_lsb']:.2f} LSB rms; {val['speedup']:.2g}x faster per VMM",
          file=sys.stderr)
    print("[5/5] LeNet on 4,000 MNIST digits, 1 epoch, mixed precision on the calibrated "
          "tiles ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="circuitsim-demo-") as out:
        run = train(TrainConfig(epochs=1, seed=args.seed), out=out, table=table)
    writes = run.writes
    print(f"      test accuracy {100 * run.test_accuracy:.2f}% on 1,000 held-out digits, "
          f"{writes['device_writes']:,} device writes ({writes['writes_per_device_mean']:.2f} "
          f"per device), {run.seconds_per_epoch:.1f} s", file=sys.stderr)
    payload = {
        "device_conductance_us": [round(float(v), 4) for v in g],
        "tile_rows": hw.array.rows,
        "tile_cols": hw.array.cols,
        "codes": [int(v) for v in tile.codes],
        "ideal_codes": [int(v) for v in ideal],
        "tile_solve_seconds": tile.solve_seconds,
        "calibration": str(cal.path),
        "calibration_cache_hit": cal.cache_hit,
        "surrogate_validation": {k: v for k, v in val.items() if k != "by_kind"},
        "lenet_test_accuracy": run.test_accuracy,
        "lenet_device_writes": run.writes["device_writes"],
        "seconds": time.perf_counter() - started,
    }
    _emit(args, payload, f"done in {payload['seconds']:.1f} s")


# ---- calibrate / report -----------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> None:
    from calibration.calibrate import calibrate

    hw, solver = _hardware(args)
    res = calibrate(hw, preset=args.preset, solver=solver, out=args.out, workers=args.workers,
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
    _emit(args, payload, f"calibration {what}: {res.path}")


def cmd_report(args: argparse.Namespace) -> None:
    from calibration.report import write_report

    paths = write_report(args.table, args.out)
    _emit(args, {"plots": [str(p) for p in paths]},
          f"{len(paths)} plots written to {args.out}")


# ---- surrogate validation -----------------------------------------------------------------
def load_calibration(args: argparse.Namespace):
    """The calibration table a command asks for: ``--table PATH``, or ``--preset`` (with
    ``--config``) from the cache, built first when it is missing (with its progress bar)."""
    from calibration.calibrate import calibrate
    from calibration.store import open_table

    if getattr(args, "table", None) is not None:
        return open_table(args.table)
    hw = preset(args.preset)
    solver = SolverConfig()
    if getattr(args, "config", None):
        hw, solver = load_config(args.config, base=hw)
    res = calibrate(hw, preset=args.preset, solver=solver,
                    workers=getattr(args, "workers", 2))
    if not res.cache_hit:
        print(f"calibration built from {res.spice_runs} ngspice runs in {res.seconds:.0f} s: "
              f"{res.path}", file=sys.stderr)
    return open_table(res.path, expected_hash=res.content_hash)


def _case_progress(label: str):
    def show(done: int, total: int) -> None:
        print(f"{label}: {done}/{total} tiles solved in ngspice", file=sys.stderr, flush=True)
    return show


def cmd_validate(args: argparse.Namespace) -> None:
    from calibration.validate import plot_validation, validate
    from circuitsim.runner import check_ngspice

    check_ngspice()
    table = load_calibration(args)
    result = validate(table, cases=args.cases, seed=args.seed, rows=args.rows,
                      cols=args.cols, workers=args.workers, method=args.method,
                      progress=_case_progress("validate"))
    payload = result.summary()
    payload["table"] = str(table.path)
    payload["rows"], payload["cols"] = (int(n) for n in result.cases[0].levels.shape)
    if args.plot:
        payload["plot"] = str(plot_validation(result, args.plot))
    summary = (f"surrogate vs ngspice on {payload['cases']} {payload['rows']}x{payload['cols']}"
               f" tiles: rms {payload['rms_lsb']:.3f} LSB, max {payload['max_lsb']:.3f} LSB, "
               f"codes {100 * payload['code_match']:.1f}% identical; ideal crossbar rms "
               f"{payload['ideal_rms_lsb']:.2f} LSB; {payload['speedup']:.3g}x faster per VMM")
    _emit(args, payload, summary)


# ---- training ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    from training.trainer import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, mode=args.mode,
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, threshold=args.threshold,
                      seed=args.seed, chip_seed=args.chip_seed, range_margin=args.range_margin,
                      read_noise=not args.no_read_noise, programming=args.programming,
                      test_size=args.test_size)
    table = load_calibration(args) if cfg.analog else None
    out = args.out or Path("runs") / f"{cfg.model}-{cfg.mode}-seed{cfg.seed}"
    result = train(cfg, out=out, table=table, resume=args.resume, device=args.device)
    payload = result.summary()
    if args.plot:
        from training.plots import plot_run

        payload["plots"] = [str(p) for p in plot_run(result, args.plot)]
    summary = (f"{cfg.model} on {cfg.dataset} ({cfg.mode}): test accuracy "
               f"{100 * result.test_accuracy:.2f}% after {result.epochs} epochs, "
               f"{result.seconds_per_epoch:.1f} s per epoch, {payload['device_writes']} device "
               f"writes; checkpoint {result.checkpoint}")
    _emit(args, payload, summary)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.trainer import evaluate, load_checkpoint

    table = None
    if args.table is not None or args.fresh_chip is not None:
        mode = load_checkpoint(args.checkpoint)["config"]["mode"]
        if args.table is not None or mode == "float":
            table = load_calibration(args)
    result = evaluate(args.checkpoint, args.dataset, table=table, fresh_chip=args.fresh_chip,
                      device=args.device)
    where = f"a fresh chip (seed {args.fresh_chip})" if args.fresh_chip is not None else \
        ("the training chip" if result["mode"] != "float" else "float weights")
    _emit(args, result, f"test accuracy {100 * result['test_accuracy']:.2f}% on {where}")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path,
                   help="a calibration table (.h5); default: the preset's, from the cache")
    p.add_argument("--workers", type=int, default=2,
                   help="ngspice worker processes for calibration and validation solves")


# ---- parser -----------------------------------------------------------------------------
def _count(text: str, lo: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {lo}")
    return value


def _non_negative_int(text: str) -> int:
    return _count(text, 0)


def _positive_int(text: str) -> int:
    return _count(text, 1)


def _add_common(p: argparse.ArgumentParser, *, default_preset: str = "chip") -> None:
    p.add_argument("--preset", default=default_preset,
                   help="hardware preset: chip (64x64, default), paper-sim (256x64), tiny (8x8)")
    p.add_argument("--config", type=Path, help="TOML file overriding the preset's fields")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log solver details to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitsim",
        description="Circuit-accurate (ngspice) simulation of RRAM compute-in-memory tiles.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("device", help="one 1T1R cell")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)
    pulses = dev_sub.add_parser(
        "pulses", help="N SET then M RESET pulses on one cell in ngspice, reading after each")
    pulses.add_argument("--set", type=_non_negative_int, required=True, help="SET pulses")
    pulses.add_argument("--reset", type=_non_negative_int, required=True, help="RESET pulses")
    pulses.add_argument("--amplitude", type=float,
                        help="pulse amplitude for both kinds, V (default 2.2 V SET, 3.0 V RESET)")
    pulses.add_argument("--width", type=float, help="pulse width, s (default 100e-9)")
    pulses.add_argument("--initial-us", type=float,
                        help="initial cell read conductance, uS (default: the floor)")
    pulses.add_argument("--seed", type=int, default=0,
                        help="seed of the device-to-device and cycle-to-cycle draws")
    _add_common(pulses)
    pulses.set_defaults(func=cmd_device_pulses)

    arr = sub.add_parser("array", help="program a random tile and solve a bit-serial read")
    arr.add_argument("--rows", type=int)
    arr.add_argument("--cols", type=int)
    arr.add_argument("--seed", type=int, default=0)
    _add_common(arr)
    arr.set_defaults(func=cmd_array)

    cal = sub.add_parser("calibrate", help="ngspice sweeps -> HDF5 lookup surfaces (cached)")
    cal.add_argument("--out", type=Path,
                     help="a .h5 file, or a folder for it (default: the user cache folder)")
    cal.add_argument("--workers", type=int, default=2,
                     help="local worker processes, one ngspice each (0: in this process)")
    cal.add_argument("--scheduler", help="address of a Dask distributed scheduler")
    cal.add_argument("--force", action="store_true", help="recompute even if cached")
    cal.add_argument("--surfaces", help="comma-separated subset of the surfaces")
    _add_common(cal)
    cal.set_defaults(func=cmd_calibrate)

    rep = sub.add_parser("report", help="draw each surface of a calibration table as PNG")
    rep.add_argument("--table", type=Path, required=True)
    rep.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("-v", "--verbose", action="store_true")
    rep.set_defaults(func=cmd_report)

    val = sub.add_parser("validate", help="the surrogate tile against whole-tile ngspice solves")
    val.add_argument("--cases", type=_positive_int, default=20, help="held-out tiles to solve")
    val.add_argument("--rows", type=_positive_int, help="tile rows (default: the table's)")
    val.add_argument("--cols", type=_positive_int, help="tile columns (default: the table's)")
    val.add_argument("--seed", type=int, default=0)
    val.add_argument("--plot", type=Path, help="write a scatter plot (PNG) here")
    val.add_argument("--method", choices=["exact", "fast"], default="exact",
                     help="how the surrogate computes the effective conductances")
    _add_table_options(val)
    _add_common(val)
    val.set_defaults(func=cmd_validate)

    tr = sub.add_parser("train", help="train a model with circuit-calibrated analog tiles")
    tr.add_argument("--model", default="lenet", help="lenet, vgg8 or resnet18")
    tr.add_argument("--dataset", default="mnist5k",
                    help="mnist5k (default), mnist:DIR or cifar10:DIR (never downloaded)")
    tr.add_argument("--mode", default="mixed", help="mixed (default), naive or float")
    tr.add_argument("--epochs", type=_positive_int, default=5)
    tr.add_argument("--batch-size", type=_positive_int, default=64)
    tr.add_argument("--optimizer", default="adamw", help="sgd, adam or adamw (default)")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--weight-decay", type=float, default=0.0)
    tr.add_argument("--threshold", type=float, default=1.0 / 15.0,
                    help="write threshold, fraction of the weight range (default 1/15)")
    tr.add_argument("--seed", type=int, default=0, help="model initialization and data order")
    tr.add_argument("--chip-seed", type=int, default=0,
                    help="the simulated chip: device-to-device draws and noise")
    tr.add_argument("--range-margin", type=float, default=3.0,
                    help="weight range mapped onto the devices, times the initial max |w| "
                         "(weights trained from scratch grow 2-5x beyond their initial range)")
    tr.add_argument("--no-read-noise", action="store_true", help="noise-free analog reads")
    tr.add_argument("--programming", default="exact",
                    help="exact (write-and-verify on the calibrated pulses, default) or "
                         "statistical (outcomes drawn from ngspice's write-and-verify runs)")
    tr.add_argument("--test-size", type=_positive_int,
                    help="mnist5k: digits held out for testing (default 1000)")
    tr.add_argument("--out", type=Path, help="run folder (default runs/MODEL-MODE-seedS)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--plot", type=Path, help="write training curves and write histograms here")
    tr.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    _add_table_options(tr)
    _add_common(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="test accuracy of a trained checkpoint")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--dataset", default="mnist5k", help="only its test split is read")
    ev.add_argument("--fresh-chip", type=int, metavar="SEED",
                    help="first program the model onto a new simulated chip")
    ev.add_argument("--device", default="auto")
    _add_table_options(ev)
    _add_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="the main job on the embedded default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2, help="calibration worker processes")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except CircuitSimError as err:
        kind = "configuration error" if isinstance(err, ConfigError) else "error"
        print(f"circuitsim: {kind}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
