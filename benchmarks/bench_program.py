"""The surrogate's write path: write-and-verify of a training step's few devices, and of a
whole tile set from the floor, in the numpy pulse loop and in the torch one.

``ProgrammingModel.program`` runs its pulse loop in numpy for up to
``program_model._HOST_DEVICES`` devices on the CPU and as torch operations otherwise; both
give the same results bit for bit (``tests/test_program_model.py``). This measures what the
choice buys: for N devices moved by up to three levels from where they stand (what a mixed
training step asks; verify reads noise-free, as in training), seconds per call of each loop,
called in turn (median of the rounds and the best), and the torch loop programming 64 x 64 x
16 devices from their floor to random levels on one thread and on two.

Usage: ``python benchmarks/bench_program.py [--table PATH] [--json]`` (without
``--table``: the chip preset's calibration, from the cache, built first if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from bench_surrogate import _default_table, interleaved
from calibration.store import Table, open_table
from surrogate import program_model
from surrogate.program_model import ProgrammingModel

COUNTS = (50, 150, 1000, 2000)
STEP_LEVELS = 3          # a training step moves a device by at most a few levels
WHOLE = (64, 64, 16)     # 16 tiles of 64x64 devices, programmed from their floor


def _few(model: ProgrammingModel, count: int, seed: int) -> dict[str, Any]:
    """Each loop on ``count`` devices moved by up to STEP_LEVELS levels."""
    gen = torch.Generator().manual_seed(seed)
    devices = model.draw_devices((count,), generator=gen)
    levels = model.level_conductances()
    start_level = torch.randint(STEP_LEVELS, model.levels - STEP_LEVELS, (count,),
                                generator=gen)
    move = torch.randint(-STEP_LEVELS, STEP_LEVELS + 1, (count,), generator=gen)
    start = model.state_for(levels[start_level])
    targets = levels[start_level + move]

    def call() -> Any:
        return model.program(targets, devices, state=start, read_noise=False,
                             generator=torch.Generator().manual_seed(seed + 1))

    def with_torch_loop() -> Any:
        saved, program_model._HOST_DEVICES = program_model._HOST_DEVICES, 0
        try:
            return call()
        finally:
            program_model._HOST_DEVICES = saved

    first = call()
    steps = int((first.floor_pulses + first.set_pulses + first.reset_pulses).max())
    timing = interleaved({"numpy": call, "torch": with_torch_loop}, reference="numpy",
                         repeat=9)
    return {"devices": count, "pulse_steps_of_the_slowest": steps,
            "numpy_ms": 1e3 * timing["numpy"]["seconds"],
            "torch_ms": 1e3 * timing["torch"]["seconds"],
            "numpy_best_ms": 1e3 * timing["numpy"]["best_seconds"],
            "torch_best_ms": 1e3 * timing["torch"]["best_seconds"]}


def _whole(model: ProgrammingModel, threads: int, seed: int) -> dict[str, Any]:
    """The torch loop programming WHOLE devices from their floor to random levels."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        devices = model.draw_devices(WHOLE, generator=gen)
        targets = model.level_conductances()[torch.randint(0, model.levels, WHOLE,
                                                           generator=gen)]
        started = time.perf_counter()
        model.program(targets, devices, read_noise=False,
                      generator=torch.Generator().manual_seed(seed + 1))
        return {"threads": threads, "seconds": time.perf_counter() - started}
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="calibration table (default: the chip preset's)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    table: Table = open_table(args.table) if args.table else _default_table()
    torch.set_num_threads(1)
    model = ProgrammingModel.from_table(table)
    few = [_few(model, count, seed=count) for count in COUNTS]
    whole = [_whole(model, threads, seed=7) for threads in (1, 2)]
    result = {"table": str(table.path), "few_devices": few, "whole_tiles": whole}
    if args.json:
        print(json.dumps(result))
        return 0
    print("devices  steps  numpy ms  torch ms  (best: numpy / torch)")
    for r in few:
        print(f"{r['devices']:7d}  {r['pulse_steps_of_the_slowest']:5d}  {r['numpy_ms']:8.1f}"
              f"  {r['torch_ms']:8.1f}  ({r['numpy_best_ms']:.1f} / {r['torch_best_ms']:.1f})")
    for r in whole:
        print(f"{WHOLE[0]}x{WHOLE[1]}x{WHOLE[2]} from the floor, torch loop, "
              f"{r['threads']} thread(s): {r['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
