"""Training-step benchmark: float, mixed and naive steps side by side, with a stage breakdown.

For each model (LeNet on 1x28x28, VGG-8 and ResNet-18 on 3x32x32 inputs), one training
step at batch ``--batch`` is timed in each mode, the modes interleaved step by step so that
they share the machine's load: ``float`` (plain torch), ``mixed`` (analog forward through
the ``chip`` calibration's surrogate tiles with read noise, digital backward, writes past
the threshold by write-and-verify on the calibrated pulses) and ``naive`` (every device
rewritten each step; ``--naive`` only, it is slow at scale). The inputs are uniform random
images and random labels of a fixed seed (no dataset is read: the cost of a step does not
depend on what the images show, only on how many of their patches are all zero, and here
none are).

The stage breakdown of the analog steps (seconds per step, the same steps as the total):

* ``analog read``: the tiles' reads in the forward (``AnalogTiles.analog_columns``), of
  which ``conversion`` is the fused conversion of the shortcut's reads
  (``surrogate.fused.pair_sums``: read and ADC noise, rounding, pair differences, sums over
  tile rows) and ``noise`` the noise of reads that are not fused
  (``TileSurrogate._add_noise``; tiles that can reach a TIA rail);
* ``backward``: ``loss.backward()`` (digital, through the effective weights);
* ``optimizer``: the optimizer step, accumulation and planning (``opt.step`` less what
  follows);
* ``write-and-verify``: programming the devices due (``ProgrammingModel.program``, or
  ``StatisticalProgramming.program`` with ``--programming statistical``);
* ``re-prepare``: the read preparation of the written tiles (``training.analog._reprepare``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from calibration.calibrate import calibrate
from calibration.store import open_table
from netlists.config import preset
from surrogate import fused, program_model, statistical, tile
from training import analog
from training.allocator import keep_freed_memory
from training.analog import AnalogChip, from_digital
from training.models import DEFAULT_INPUT_SHAPES, build_model
from training.optim import MixedPrecisionOptimizer

#: Stages timed on the training thread: (object, attribute, stage).
_STAGES = ((analog.AnalogTiles, "analog_columns", "analog read"),
           (fused, "pair_sums", "conversion"),
           (tile.TileSurrogate, "_add_noise", "noise"),
           (program_model.ProgrammingModel, "program", "write-and-verify"),
           (statistical.StatisticalProgramming, "program", "write-and-verify"),
           (analog, "_reprepare", "re-prepare"))


class Stages:
    """Seconds spent in each stage since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def reset(self) -> dict[str, float]:
        with self._lock:
            out, self.seconds = dict(self.seconds), defaultdict(float)
        return out

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        """Time every call of ``owner.name`` (a function or method) under ``stage``."""
        inner = getattr(owner, name)
        stages = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            with stages.timing(stage):
                return inner(*args, **kwargs)

        setattr(owner, name, timed)


def _trainer(name: str, mode: str, table: Any, *, batch: int, device: torch.device,
             programming: str, seed: int) -> Callable[[], None]:
    """One training step of ``name`` in ``mode`` as a function (the same batch each time)."""
    torch.manual_seed(seed)
    shape = DEFAULT_INPUT_SHAPES[name]
    model = build_model(name, input_shape=shape).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    if mode == "float":
        opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        chip = AnalogChip(table, seed=seed, device=device, programming=programming)
        model = from_digital(model, chip)
        opt = MixedPrecisionOptimizer(model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                                      mode=mode)
    model.train()

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        with STAGES.timing("backward"):
            loss.backward()
        with STAGES.timing("optimizer"):
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


STAGES = Stages()


def bench(name: str, table: Any, *, modes: list[str], steps: int, batch: int,
          device: torch.device, programming: str, seed: int) -> dict[str, Any]:
    steppers = {mode: _trainer(name, mode, table, batch=batch, device=device,
                               programming=programming, seed=seed) for mode in modes}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    stages: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for round_ in range(steps + 1):                    # the first round warms up
        for mode, step in steppers.items():
            STAGES.reset()
            start = time.perf_counter()
            step()
            took = time.perf_counter() - start
            spent = STAGES.reset()
            if round_:
                seconds[mode].append(took)
                stages[mode].append(spent)
    out: dict[str, Any] = {"model": name, "batch": batch, "device": str(device),
                           "steps": steps, "seconds_per_step": {}, "stages": {}}
    for mode in modes:
        out["seconds_per_step"][mode] = statistics.median(seconds[mode])
        if mode != "float":
            keys = sorted({k for s in stages[mode] for k in s})
            per = {k: statistics.median(s.get(k, 0.0) for s in stages[mode]) for k in keys}
            # the optimizer stage holds the writes and the re-preparation
            per["optimizer"] = per.get("optimizer", 0.0) - per.get("write-and-verify", 0.0) \
                - per.get("re-prepare", 0.0)
            out["stages"][mode] = per
    base = out["seconds_per_step"].get("float")
    if base:
        out["ratio_to_float"] = {m: s / base for m, s in out["seconds_per_step"].items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,vgg8,resnet18")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (median)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--programming", default="exact", help="exact or statistical")
    p.add_argument("--naive", action="store_true", help="also time naive steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", help="calibration table (default: the chip preset's)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    keep_freed_memory()                   # as train() does: for the float and mixed steps
    if args.table:
        table = open_table(args.table)
    else:
        cal = calibrate(preset("chip"), preset="chip")
        table = open_table(cal.path, expected_hash=cal.content_hash)
    for owner, attr, stage in _STAGES:
        STAGES.wrap(owner, attr, stage)

    modes = ["float", "mixed"] + (["naive"] if args.naive else [])
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, device {device}, batch "
          f"{args.batch}, programming {args.programming}; median seconds per step",
          file=sys.stderr)
    results = []
    for name in [m for m in args.models.split(",") if m]:
        res = bench(name, table, modes=modes, steps=args.steps, batch=args.batch,
                    device=device, programming=args.programming, seed=args.seed)
        results.append(res)
        line = "  ".join(f"{m} {s:.3f}" for m, s in res["seconds_per_step"].items())
        ratios = "  ".join(f"{m}/float {r:.2f}x" for m, r in res["ratio_to_float"].items()
                           if m != "float")
        print(f"{name:>9}: {line}  ({ratios})", flush=True)
        for mode, per in res["stages"].items():
            print(f"{'':>11}{mode} stages: " + ", ".join(f"{k} {v:.3f}"
                                                         for k, v in per.items()),
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": threads, "results": results},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
