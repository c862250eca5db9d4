"""``circuitsim demo``: the main job on the embedded default, from one cell to training.

Characterize a 1T1R cell in ngspice, solve a random tile bit-serially, build (or find in
the cache) the calibration tables, check the surrogate tile against held-out ngspice solves,
and train LeNet for one epoch with the mixed-precision scheme on the calibrated tiles.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from cli.commands import DEFAULT_PRESET, emit, hardware, open_runner
from netlists.files import check_writable_folder


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the embedded default: characterize a device, solve a tile in SPICE,
    build (or find in the cache) the calibration tables, check the surrogate tile against
    ngspice, and train LeNet with the mixed-precision scheme on the calibrated tiles."""
    import tempfile

    from calibration.calibrate import calibrate
    from calibration.store import open_table
    from circuitsim.device import simulate_pulses
    from circuitsim.tile import ideal_codes, random_tile, solve_tile
    from surrogate.validate import validate
    from training.trainer import TrainConfig, train

    from calibration.store import default_cache_dir

    hw, solver = hardware(args)
    check_writable_folder(default_cache_dir(), what="the calibration cache")
    started = time.perf_counter()
    with open_runner(solver) as runner:
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
    emit(args, payload, f"done in {payload['seconds']:.1f} s")
