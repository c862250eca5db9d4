"""The training comparisons of the mixed-precision scheme, reproduced in one run.

Trains the same model (same seed, same data order, same epochs) three ways on a dataset
(default: LeNet on ``mnist5k``, 4,000 digits for training, 1,000 held out):

* ``float``: plain FP32 torch;
* ``mixed``: analog forward through the surrogate tiles of the ``chip`` calibration, digital
  backward, device writes only past the threshold (1/15 of the weight range);
* ``naive``: the same analog forward, every device rewritten to its quantized target every
  step;

then programs the ``mixed`` and the ``float`` models onto a fresh simulated chip (new
device-to-device draws and programming errors) and evaluates them there without retraining.
The ``float`` and ``mixed`` runs alternate epoch by epoch (each resumes its checkpoint), so
their times per epoch are measured side by side on the same machine load.

Prints a table to stderr and, with ``--json``, one JSON object as the last stdout line::

    python benchmarks/experiment_training.py --epochs 10 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from calibration.calibrate import calibrate
from calibration.store import open_table
from netlists.config import preset
from training.trainer import TrainConfig, evaluate, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="lenet")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--naive-epochs", type=int, help="epochs of the naive run (default: same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh-chip", type=int, default=101, help="seed of the transfer chip")
    p.add_argument("--table", type=Path, help="calibration (default: the chip preset's)")
    p.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    log = sys.stderr
    if args.table is None:
        cal = calibrate(preset("chip"), preset="chip")
        table = open_table(cal.path, expected_hash=cal.content_hash)
    else:
        table = open_table(args.table)
    out = args.out or Path(tempfile.mkdtemp(prefix="circuitsim-experiment-"))
    base = dict(model=args.model, dataset=args.dataset, seed=args.seed)
    cfgs = {mode: TrainConfig(mode=mode, epochs=args.epochs, **base)
            for mode in ("float", "mixed", "naive")}
    started = time.perf_counter()
    runs: dict[str, list] = {"float": [], "mixed": []}
    for epoch in range(1, args.epochs + 1):          # float and mixed alternate epochs
        for mode in ("float", "mixed"):
            cfg = TrainConfig(**{**cfgs[mode].to_dict(), "epochs": epoch})
            runs[mode].append(train(cfg, out=out / mode, table=table if cfg.analog else None,
                                    resume=epoch > 1, stream=log))
    naive_epochs = args.naive_epochs or args.epochs
    naive = train(TrainConfig(**{**cfgs["naive"].to_dict(), "epochs": naive_epochs}),
                  out=out / "naive", table=table, stream=log)
    final = {"float": runs["float"][-1], "mixed": runs["mixed"][-1], "naive": naive}

    transfer = {}
    for mode in ("mixed", "float"):
        res = evaluate(final[mode].checkpoint, args.dataset, table=table,
                       fresh_chip=args.fresh_chip)
        transfer[mode] = res["test_accuracy"]

    def secs(mode: str) -> float:
        per = [r.history[-1]["seconds"] for r in runs[mode]]
        return sum(per) / len(per)

    summary = {
        "model": args.model, "dataset": args.dataset, "epochs": args.epochs,
        "naive_epochs": naive_epochs, "seed": args.seed, "table": str(table.path),
        "accuracy": {m: final[m].test_accuracy for m in final},
        "accuracy_by_epoch": {m: [h["test_accuracy"] for h in final[m].history]
                              for m in final},
        "mixed_minus_float_points": 100 * (final["mixed"].test_accuracy
                                           - final["float"].test_accuracy),
        "device_writes": {m: final[m].writes.get("device_writes", 0)
                          for m in ("mixed", "naive")},
        "write_pulses": {m: final[m].writes.get("write_pulses", 0) for m in ("mixed", "naive")},
        "writes_per_device_mean": {m: final[m].writes.get("writes_per_device_mean", 0.0)
                                   for m in ("mixed", "naive")},
        "writes_per_device_max": {m: final[m].writes.get("writes_per_device_max", 0)
                                  for m in ("mixed", "naive")},
        "fresh_chip_accuracy": transfer,
        "transfer_loss_points": {m: 100 * (final[m].test_accuracy - transfer[m])
                                 for m in transfer},
        "seconds_per_epoch": {"float": secs("float"), "mixed": secs("mixed"),
                              "naive": naive.seconds_per_epoch},
        "seconds": time.perf_counter() - started,
        "runs": str(out),
    }
    naive_w = summary["device_writes"]["naive"] / max(naive_epochs, 1)
    mixed_w = summary["device_writes"]["mixed"] / max(args.epochs, 1)
    summary["naive_over_mixed_writes_per_epoch"] = naive_w / mixed_w if mixed_w else None
    summary["mixed_over_float_time"] = summary["seconds_per_epoch"]["mixed"] / \
        summary["seconds_per_epoch"]["float"]

    acc = summary["accuracy"]
    print(f"\n{args.model} on {args.dataset}, {args.epochs} epochs, seed {args.seed}", file=log)
    print(f"  test accuracy: float {100 * acc['float']:.2f}%, mixed {100 * acc['mixed']:.2f}%, "
          f"naive {100 * acc['naive']:.2f}% ({naive_epochs} epochs)", file=log)
    print(f"  device writes: mixed {summary['device_writes']['mixed']:,}, naive "
          f"{summary['device_writes']['naive']:,} (per epoch: naive/mixed = "
          f"{summary['naive_over_mixed_writes_per_epoch']:.0f}x); writes per device mixed "
          f"mean {summary['writes_per_device_mean']['mixed']:.2f}, max "
          f"{summary['writes_per_device_max']['mixed']}", file=log)
    print(f"  fresh chip (seed {args.fresh_chip}): mixed {100 * transfer['mixed']:.2f}%, "
          f"float {100 * transfer['float']:.2f}%", file=log)
    print(f"  seconds per epoch: float {secs('float'):.2f}, mixed {secs('mixed'):.2f} "
          f"({summary['mixed_over_float_time']:.1f}x), naive {naive.seconds_per_epoch:.2f}",
          file=log)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
