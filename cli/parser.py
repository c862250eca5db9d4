"""The ``circuitsim`` argument parser: every subcommand, option, type and help text.

Usage errors are raised as :class:`UsageError` (not printed and exited, as argparse does)
so that ``cli.main`` answers them like any other bad input, the JSON error line included.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from cli.commands import (cmd_array, cmd_calibrate, cmd_device_fit, cmd_device_pulses,
                          cmd_device_retention, cmd_device_synthesize, cmd_evaluate,
                          cmd_report, cmd_sweep, cmd_train, cmd_validate)
from cli.demo import cmd_demo
from cli.energy import cmd_energy
from netlists.errors import ConfigError


class UsageError(ConfigError):
    """An option is missing, unknown or malformed (found while parsing the command line)."""


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


def _non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _duration(text: str) -> float:
    """Seconds in a duration such as ``24h`` (``surrogate.retention.parse_duration``)."""
    from surrogate.retention import parse_duration

    try:
        return parse_duration(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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

    ret = _command(dev_sub, "retention", cmd_device_retention,
                   "programmed levels left alone, solved in ngspice: conductance vs time")
    ret.add_argument("--levels", "--level", help="comma-separated level indices (default: "
                                                 "all levels, or 16 spread over them)")
    ret.add_argument("--hours", type=_number, default=24.0,
                     help="time after programming, hours (default 24)")
    ret.add_argument("--temperature", type=_number, metavar="K",
                     help="ambient temperature, K (default: the device's, 300 K)")
    ret.add_argument("--plot", type=Path, help="levels vs time (PNG) here")
    _add_common(ret)

    fit = _command(dev_sub, "fit", cmd_device_fit,
                   "fit the compact model to measured pulse trains, confirm it in ngspice")
    fit.add_argument("--data", type=Path, required=True,
                     help="the measured CSV (format: circuitsim/measured.py, "
                          "examples/device-fit/README.md)")
    fit.add_argument("--params", help="comma-separated device parameters to fit (default: "
                                      "mobility_m2_vs,n_min,nu_set_hz,nu_reset_hz,"
                                      "hop_distance_nm,p_window_set,p_window_reset)")
    fit.add_argument("--out", type=Path,
                     help="the fitted configuration, TOML (default: DATA-fit.toml here)")
    fit.add_argument("--plot", type=Path, help="measured vs fitted trains (PNG) here")
    _add_common(fit)

    syn = _command(dev_sub, "synthesize", cmd_device_synthesize,
                   "pulse trains of the configured device, solved in ngspice, as measured CSV")
    syn.add_argument("--out", type=Path, required=True, help="the CSV to write")
    syn.add_argument("--devices", type=_positive_int, default=4,
                     help="devices, each its own device-to-device draw (default 4)")
    syn.add_argument("--seed", type=_seed, default=0,
                     help="seed of the draws and the read noise (>= 0)")
    syn.add_argument("--read-noise-us", type=_non_negative_number, default=0.05,
                     help="Gaussian read noise added to each read, uS rms (default 0.05)")
    _add_common(syn)

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
    tr.add_argument("--mode", default="mixed",
                    help="mixed (default), naive, float or qat (software, weights "
                         "fake-quantized to the table's levels with noise injected)")
    tr.add_argument("--epochs", type=_positive_int, default=5,
                    help="epochs to train (with --resume: the total, default 5)")
    tr.add_argument("--batch-size", type=_positive_int, default=64,
                    help="samples per step (default 64)")
    tr.add_argument("--optimizer", default="adamw", help="sgd, adam or adamw (default)")
    tr.add_argument("--lr", type=_number, default=4e-3,
                    help="learning rate (default 4e-3, the paper's)")
    tr.add_argument("--weight-decay", type=_number, default=0.0,
                    help="the optimizer's weight decay (default 0)")
    tr.add_argument("--threshold", type=_number,
                    help="write threshold, fraction of the weight range (default: the "
                         "[surrogate] write_threshold of --config, else 1/15)")
    tr.add_argument("--seed", type=_seed, default=0,
                    help="model initialization, data order and the mnist5k split")
    tr.add_argument("--chip-seed", type=_seed, default=0,
                    help="the simulated chip: device-to-device draws and noise")
    tr.add_argument("--range-margin", type=_number, default=3.0,
                    help="weight range mapped onto the devices, times the initial max |w| "
                         "(weights trained from scratch grow 2-5x beyond their initial range)")
    tr.add_argument("--qat-noise", type=_non_negative_number, default=0.5,
                    help="qat: noise on each quantized weight in training, levels rms "
                         "(default 0.5, the paper's programming error)")
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

    sw = _command(sub, "sweep", cmd_sweep,
                  "a grid of train (and fresh-chip evaluate) runs from one spec")
    sw.add_argument("spec", type=Path, help="the spec, TOML ([base], [grid], [evaluate]; "
                                            "see experiments/README.md)")
    sw.add_argument("--out", type=Path, help="results folder (default sweeps/SPEC-NAME)")
    sw.add_argument("--workers", type=_non_negative_int, default=2,
                    help="local worker processes, one run each (0: in this process)")
    sw.add_argument("--scheduler", help="address of a Dask distributed scheduler")
    sw.add_argument("--resume", action="store_true",
                    help="continue the sweep in --out (finished runs are kept)")
    sw.add_argument("--no-plots", action="store_true", help="write no plots")
    _add_json(sw)

    ev = _command(sub, "evaluate", cmd_evaluate, "test accuracy of a trained checkpoint")
    ev.add_argument("--checkpoint", type=Path, required=True,
                    help="checkpoint.pt written by `circuitsim train`")
    ev.add_argument("--dataset", default="mnist5k",
                    help="only its test split is read (mnist5k: the run's own held-out digits)")
    ev.add_argument("--fresh-chip", type=_seed, metavar="SEED",
                    help="first program the model onto a new simulated chip")
    ev.add_argument("--after", type=_duration, metavar="DURATION",
                    help="evaluate this long after programming, the devices drifting "
                         "(90s, 30min, 2h, 24h, 7d, 1y; the table's retention surface)")
    ev.add_argument("--temperature", type=_number, metavar="K",
                    help="ambient temperature while the devices wait, K (default: the "
                         "device's, 300 K)")
    ev.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    _add_table_options(ev)
    _add_common(ev)

    en = _command(sub, "energy", cmd_energy,
                  "energy and latency of a tile VMM and of one image of a model")
    en.add_argument("--model", default="lenet",
                    help="lenet (default), vgg8 or resnet18: per-image figures")
    _add_table_options(en)
    _add_common(en)

    demo = _command(sub, "demo", cmd_demo, "the main job on the embedded default")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of every draw (>= 0)")
    demo.add_argument("--workers", type=_non_negative_int, default=2,
                      help="calibration worker processes")
    _add_common(demo)
    return parser
