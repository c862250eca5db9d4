"""The surrogate's write path: write-and-verify in the compiled pulse loop and in the torch
one, for a training step's devices and for whole tiles from their floor.

``ProgrammingModel.program`` runs its pulse loop compiled on the CPU (numba,
``surrogate.program_model._pulse_loop``) and as torch operations on CUDA; the torch loop is
also the compiled one's reference, the same results bit for bit
(``tests/test_program_model.py``). This measures both on the CPU: for N devices moved by up
to three levels from where they stand (what a mixed training step asks; verify reads
noise-free, as in training), seconds per call of each loop, called in turn (median of the
rounds and the best), and 64 x 64 x 16 devices programmed from their floor to random levels.

Usage: ``python benchmarks/bench_program.py [--table PATH] [--json]`` (without
``--table``: the chip preset's calibration, from the cache, built first if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import torch

from bench_surrogate import _default_table, interleaved
from calibration.store import Table, open_table
from surrogate import program_model
from surrogate.program_model import ProgrammingModel

COUNTS = (50, 1000, 20_000, 1_000_000)
STEP_LEVELS = 3          # a training step moves a device by at most a few levels
WHOLE = (64, 64, 16)     # 16 tiles of 64x64 devices, programmed from their floor
LOOPS = ("compiled", "torch")


def _loop(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with the pulse loop ``name``."""
    def run() -> Any:
        saved, program_model._COMPILED = program_model._COMPILED, name == "compiled"
        try:
            return call()
        finally:
            program_model._COMPILED = saved
    return run


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

    first = call()
    steps = int((first.floor_pulses + first.set_pulses + first.reset_pulses).max())
    timing = interleaved({name: _loop(name, call) for name in LOOPS}, reference="compiled",
                         repeat=9 if count <= 20_000 else 3)
    return {"devices": count, "pulse_steps_of_the_slowest": steps,
            "mean_pulses": float(first.pulses.float().mean()),
            **{f"{name}_ms": 1e3 * timing[name]["seconds"] for name in LOOPS},
            **{f"{name}_best_ms": 1e3 * timing[name]["best_seconds"] for name in LOOPS}}


def _whole(model: ProgrammingModel, seed: int) -> dict[str, Any]:
    """Each loop programming WHOLE devices from their floor to random levels."""
    gen = torch.Generator().manual_seed(seed)
    devices = model.draw_devices(WHOLE, generator=gen)
    targets = model.level_conductances()[torch.randint(0, model.levels, WHOLE,
                                                       generator=gen)]

    def call() -> Any:
        return model.program(targets, devices, read_noise=False,
                             generator=torch.Generator().manual_seed(seed + 1))

    result = {}
    for name in LOOPS:
        started = time.perf_counter()
        _loop(name, call)()
        result[f"{name}_seconds"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="calibration table (default: the chip preset's)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    table: Table = open_table(args.table) if args.table else _default_table()
    model = ProgrammingModel.from_table(table)
    _few(model, 300, seed=0)                     # compile (or load) the kernels first
    few = [_few(model, count, seed=count) for count in COUNTS]
    whole = _whole(model, seed=7)
    result = {"table": str(table.path), "threads": torch.get_num_threads(),
              "few_devices": few, "whole_tiles": whole}
    if args.json:
        print(json.dumps(result))
        return 0
    print("devices  steps  pulses  compiled ms  torch ms  (best: compiled / torch)")
    for r in few:
        print(f"{r['devices']:7d}  {r['pulse_steps_of_the_slowest']:5d}  "
              f"{r['mean_pulses']:6.1f}  {r['compiled_ms']:11.1f}  {r['torch_ms']:8.1f}  "
              f"({r['compiled_best_ms']:.1f} / {r['torch_best_ms']:.1f})")
    print(f"{WHOLE[0]}x{WHOLE[1]}x{WHOLE[2]} from the floor: compiled "
          f"{whole['compiled_seconds']:.2f} s, torch {whole['torch_seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
