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
import math
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from netlists.config import HardwareConfig, SolverConfig, load_config, preset
from netlists.errors import CircuitSimError, ConfigError, OutputError
from netlists.files import check_writable_folder

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

DEFAULT_PRESET = "chip"

#: What an interrupted command kept, by subcommand (a KeyboardInterrupt that carries its
#: own message, such as training's, says it instead).
_INTERRUPTED = {
    "calibrate": "the ngspice jobs already finished are kept (a .parts folder beside the "
                 "table); run the same command again to resume from them",
    "demo": "the calibration's finished ngspice jobs are kept; run the demo again to resume",
    "train": "no epoch had finished, so no checkpoint was written",
}


class UsageError(ConfigError):
    """An option is missing, unknown or malformed (found while parsing the command line)."""


def _hardware(args: argparse.Namespace) -> tuple[HardwareConfig, SolverConfig]:
    hw = preset(args.preset or DEFAULT_PRESET)
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
def random_tile(hw: HardwareConfig, *, runner: SpiceRunner, seed: int, levels: int = 128
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

    from calibration.store import default_cache_dir

    hw, solver = _hardware(args)
    check_writable_folder(default_cache_dir(), what="the calibration cache")
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
    name = args.preset or DEFAULT_PRESET
    print(f"[3/5] calibration tables ({name}) from ngspice sweeps ...", file=sys.stderr)
    cal = calibrate(hw, preset=name, solver=solver, workers=args.workers)
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
    from calibration.store import default_cache_dir

    hw, solver = _hardware(args)
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
    _emit(args, payload, f"calibration {what}: {res.path}")


def cmd_report(args: argparse.Namespace) -> None:
    from calibration.report import write_report

    open_table_option(args.table)  # a bad table is refused before any folder is made
    check_writable_folder(args.out, what="--out")
    paths = write_report(args.table, args.out)
    _emit(args, {"plots": [str(p) for p in paths]},
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


def load_calibration(args: argparse.Namespace):
    """The calibration table a command asks for: ``--table PATH`` (checked against any
    ``--preset``/``--config`` given), or ``--preset`` (with ``--config``) from the cache,
    built first when it is missing (with its progress bar)."""
    from calibration.calibrate import calibrate
    from calibration.store import default_cache_dir, open_table

    if getattr(args, "table", None) is not None:
        table = open_table_option(args.table)
        check_table_matches(args, table)
        return table
    hw, solver = _hardware(args)
    check_writable_folder(default_cache_dir(), what="the calibration cache")
    res = calibrate(hw, preset=args.preset or DEFAULT_PRESET, solver=solver,
                    workers=getattr(args, "workers", 2))
    if not res.cache_hit:
        print(f"calibration built from {res.spice_runs} ngspice runs in {res.seconds:.0f} s: "
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


def _case_progress(label: str):
    def show(done: int, total: int) -> None:
        print(f"{label}: {done}/{total} tiles solved in ngspice", file=sys.stderr, flush=True)
    return show


def cmd_validate(args: argparse.Namespace) -> None:
    from calibration.validate import plot_validation, validate
    from circuitsim.runner import check_ngspice

    check_ngspice()
    if args.plot is not None:
        _output_folder(args.plot, "--plot")
    table = load_calibration(args)
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
    _emit(args, payload, summary)
    return status


# ---- training ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from training.trainer import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, mode=args.mode,
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, threshold=args.threshold,
                      seed=args.seed, chip_seed=args.chip_seed, range_margin=args.range_margin,
                      read_noise=not args.no_read_noise, programming=args.programming,
                      test_size=args.test_size)
    if not cfg.analog:
        check_unused_calibration(args, "--mode float trains plain torch on no chip")
    out = args.out or Path("runs") / f"{cfg.model}-{cfg.mode}-seed{cfg.seed}"
    check_writable_folder(out, what="--out")
    if args.plot is not None:
        check_writable_folder(args.plot, what="--plot")
    table = load_calibration(args) if cfg.analog else None
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
    _emit(args, payload, summary)
    return status


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.trainer import evaluate, load_checkpoint

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CircuitSimError as err:
        err.field = "checkpoint"
        raise
    analog = ckpt["config"]["mode"] != "float"
    table = None
    if not analog and args.fresh_chip is None:
        check_unused_calibration(args, "a float checkpoint is evaluated on no chip unless "
                                       "--fresh-chip is given")
    elif args.table is not None or not analog:
        table = load_calibration(args)
    elif args.preset is not None or args.config is not None:
        saved = ckpt.get("table_path")
        if saved and Path(saved).is_file():  # else evaluate() says the table is missing
            table = open_table_option(Path(saved), "--checkpoint")
            check_table_matches(args, table)
    del ckpt
    result = evaluate(args.checkpoint, args.dataset, table=table, fresh_chip=args.fresh_chip,
                      device=args.device)
    where = f"a fresh chip (seed {args.fresh_chip})" if args.fresh_chip is not None else \
        ("the training chip" if result["mode"] != "float" else "float weights")
    _emit(args, result, f"test accuracy {100 * result['test_accuracy']:.2f}% on {where}")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path,
                   help="a calibration table (.h5); default: the preset's, from the cache")
    p.add_argument("--workers", type=_non_negative_int, default=2,
                   help="ngspice worker processes for calibration and validation solves")


# ---- parser -----------------------------------------------------------------------------
_SEED_MAX = 2 ** 63 - 1

#: A value that starts with '-' and is a number, scientific notation included
#: (``--width -1e-7``), is taken as the option's value rather than as an option.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so that ``main`` can
    answer a malformed command line like any other bad input (the JSON error line too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)", field=_option_in(message))


def _option_in(message: str) -> str | None:
    """The option an argparse message is about, e.g. ``--seed`` in "argument --seed: ..."."""
    found = re.match(r"argument ([^:]+):", message) or \
        re.search(r"(?:required|unrecognized arguments): (\S+?)(?:,|\s|$)", message)
    if not found:
        return None
    return found.group(1).split("/")[-1]


def _count(text: str, lo: int = 0, hi: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {lo}")
    if hi is not None and value > hi:
        raise argparse.ArgumentTypeError(f"{text!r} must be <= {hi}")
    return value


def _non_negative_int(text: str) -> int:
    return _count(text, 0)


def _positive_int(text: str) -> int:
    return _count(text, 1)


def _seed(text: str) -> int:
    return _count(text, 0, _SEED_MAX)


def _number(text: str) -> float:
    """A finite real number (the option's own range is checked where it is used)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout (an error too)")
    p.add_argument("-v", "--verbose", action="store_true", help="log solver details to stderr")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="hardware preset: chip (64x64, default), paper-sim "
                                    "(256x64), tiny (8x8)")
    p.add_argument("--config", type=Path, help="TOML file overriding the preset's fields")
    _add_json(p)


def _command(sub: Any, name: str, func: Any, help: str, *,
             fields: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """A subcommand; ``fields`` names the option that sets each argument of the code below
    whose name differs from the option's (for the error messages)."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=func, fields=fields or {}, command_name=name)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="circuitsim",
        description="Circuit-accurate (ngspice) simulation of RRAM compute-in-memory tiles.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("device", help="one 1T1R cell")
    dev_sub = dev.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    pulses = _command(dev_sub, "pulses", cmd_device_pulses,
                      "N SET then M RESET pulses on one cell in ngspice, reading after each",
                      fields={"amplitude_v": "--amplitude", "width_s": "--width",
                              "initial_us": "--initial-us", "n_set": "--set",
                              "n_reset": "--reset"})
    pulses.add_argument("--set", type=_non_negative_int, required=True, help="SET pulses")
    pulses.add_argument("--reset", type=_non_negative_int, required=True, help="RESET pulses")
    pulses.add_argument("--amplitude", type=_number,
                        help="pulse amplitude for both kinds, V (default 2.2 V SET, 3.0 V RESET)")
    pulses.add_argument("--width", type=_number, help="pulse width, s (default 100e-9)")
    pulses.add_argument("--initial-us", type=_number,
                        help="initial cell read conductance, uS (default: the floor)")
    pulses.add_argument("--seed", type=_seed, default=0,
                        help="seed of the device-to-device and cycle-to-cycle draws (>= 0)")
    _add_common(pulses)

    arr = _command(sub, "array", cmd_array, "program a random tile and solve a bit-serial read")
    arr.add_argument("--rows", type=_positive_int, help="tile rows (default: the preset's)")
    arr.add_argument("--cols", type=_positive_int, help="tile columns (default: the preset's)")
    arr.add_argument("--seed", type=_seed, default=0,
                     help="seed of the random levels and inputs (>= 0)")
    _add_common(arr)

    cal = _command(sub, "calibrate", cmd_calibrate,
                   "ngspice sweeps -> HDF5 lookup surfaces (cached)")
    cal.add_argument("--out", type=Path,
                     help="a .h5 file, or a folder for it (default: the user cache folder)")
    cal.add_argument("--workers", type=_non_negative_int, default=2,
                     help="local worker processes, one ngspice each (0: in this process)")
    cal.add_argument("--scheduler", help="address of a Dask distributed scheduler")
    cal.add_argument("--force", action="store_true", help="recompute even if cached")
    cal.add_argument("--surfaces", help="comma-separated subset of the surfaces")
    _add_common(cal)

    rep = _command(sub, "report", cmd_report,
                   "draw each surface of a calibration table as PNG")
    rep.add_argument("--table", type=Path, required=True, help="the calibration table (.h5)")
    rep.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    _add_json(rep)

    val = _command(sub, "validate", cmd_validate,
                   "the surrogate tile against whole-tile ngspice solves")
    val.add_argument("--cases", type=_positive_int, default=20, help="held-out tiles to solve")
    val.add_argument("--rows", type=_positive_int, help="tile rows (default: the table's)")
    val.add_argument("--cols", type=_positive_int, help="tile columns (default: the table's)")
    val.add_argument("--seed", type=_seed, default=0,
                     help="seed of the held-out maps and inputs (>= 0)")
    val.add_argument("--plot", type=Path, help="write a scatter plot (PNG) here")
    val.add_argument("--method", choices=["exact", "fast"], default="exact",
                     help="how the surrogate computes the effective conductances")
    _add_table_options(val)
    _add_common(val)

    tr = _command(sub, "train", cmd_train,
                  "train a model with circuit-calibrated analog tiles")
    tr.add_argument("--model", default="lenet", help="lenet, vgg8 or resnet18")
    tr.add_argument("--dataset", default="mnist5k",
                    help="mnist5k (default), mnist:DIR or cifar10:DIR (never downloaded)")
    tr.add_argument("--mode", default="mixed", help="mixed (default), naive or float")
    tr.add_argument("--epochs", type=_positive_int, default=5,
                    help="epochs to train (with --resume: the total, default 5)")
    tr.add_argument("--batch-size", type=_positive_int, default=64,
                    help="samples per step (default 64)")
    tr.add_argument("--optimizer", default="adamw", help="sgd, adam or adamw (default)")
    tr.add_argument("--lr", type=_number, default=1e-3, help="learning rate (default 1e-3)")
    tr.add_argument("--weight-decay", type=_number, default=0.0,
                    help="the optimizer's weight decay (default 0)")
    tr.add_argument("--threshold", type=_number, default=1.0 / 15.0,
                    help="write threshold, fraction of the weight range (default 1/15)")
    tr.add_argument("--seed", type=_seed, default=0,
                    help="model initialization, data order and the mnist5k split")
    tr.add_argument("--chip-seed", type=_seed, default=0,
                    help="the simulated chip: device-to-device draws and noise")
    tr.add_argument("--range-margin", type=_number, default=3.0,
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

    ev = _command(sub, "evaluate", cmd_evaluate, "test accuracy of a trained checkpoint")
    ev.add_argument("--checkpoint", type=Path, required=True,
                    help="checkpoint.pt written by `circuitsim train`")
    ev.add_argument("--dataset", default="mnist5k",
                    help="only its test split is read (mnist5k: the run's own held-out digits)")
    ev.add_argument("--fresh-chip", type=_seed, metavar="SEED",
                    help="first program the model onto a new simulated chip")
    ev.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    _add_table_options(ev)
    _add_common(ev)

    demo = _command(sub, "demo", cmd_demo, "the main job on the embedded default")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of every draw (>= 0)")
    demo.add_argument("--workers", type=_non_negative_int, default=2,
                      help="calibration worker processes")
    _add_common(demo)
    return parser


# ---- errors -------------------------------------------------------------------------------
_INTERNAL = ("func", "fields", "command_name")


def _option_for(args: argparse.Namespace, field: str | None) -> str | None:
    """The command-line option behind ``field`` (an argument or configuration field)."""
    if field is None or field.startswith("-"):
        return field
    mapped = getattr(args, "fields", {}).get(field)
    if mapped:
        return mapped
    dest = field.replace("-", "_")
    if dest in vars(args) and dest not in _INTERNAL:
        return "--" + dest.replace("_", "-")
    if "." in field and getattr(args, "config", None) is not None:
        return "--config"  # a field of the TOML file
    return None


def _fail(message: str, *, kind: str, field: str | None, option: str | None, status: int,
          as_json: bool) -> int:
    """Say what went wrong: one line on stderr, and with --json one JSON object on stdout
    (``field``: the argument or configuration field, ``option``: the option that set it)."""
    print(f"circuitsim: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "kind": kind, "field": field, "option": option,
                          "status": status}))
    return status


def _error_text(err: CircuitSimError, option: str | None, args: argparse.Namespace) -> str:
    label = "configuration error" if isinstance(err, ConfigError) else "error"
    text = str(err)
    if option == "--config" and str(args.config) not in text:
        text = f"--config {args.config}: {text}"
    elif option and option not in text:
        text = f"{option}: {text}"
    return f"{label}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(f"usage error: {err}", kind="UsageError", field=err.field,
                     option=err.field, status=2, as_json=as_json)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.func(args)
    except KeyboardInterrupt as err:
        kept = str(err) or _INTERRUPTED.get(args.command_name, "nothing was written")
        return _fail(f"interrupted: {kept}", kind="Interrupted", field=None, option=None,
                     status=130, as_json=as_json)
    except CircuitSimError as err:
        option = _option_for(args, err.field)
        return _fail(_error_text(err, option, args), kind=type(err).__name__,
                     field=err.field or option, option=option, status=2, as_json=as_json)
    except OSError as err:  # a file system error that no earlier check could foresee
        where = f" {err.filename!r}" if err.filename else ""
        return _fail(f"error: cannot read or write{where}: {err.strerror or err}",
                     kind="OutputError", field=None, option=None, status=2,
                     as_json=as_json)
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
