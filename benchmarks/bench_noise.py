"""Read-noise draws: what a training step's normals cost, and what ``NormalStream`` hides.

A mixed LeNet training step draws some 900,000 standard normals for its read noise
(``surrogate.normal_stream``). This measures, on the CPU, seconds per step's worth of draws:

* ``randn``: one ``torch.randn(count)`` call on the calling thread;
* ``take (cold)``: ``NormalStream.take`` with nothing made ahead (the block is made on the
  calling thread, as ``randn`` is);
* ``take (prefetched)``: the same after ``prefetch`` had the block made on the background
  thread while the caller slept (what a training step sees when the write-and-verify pulse
  loop keeps the caller busy meanwhile).

Median of ``--rounds`` rounds (best in brackets), ``--threads`` torch threads (default 1).

Usage: ``python benchmarks/bench_noise.py [--count N] [--rounds R] [--threads T] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from surrogate.normal_stream import NormalStream

#: Normals one mixed LeNet training step draws for its read noise.
LENET_STEP = 900_000


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(count: int, rounds: int) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"randn": [], "take_cold": [], "take_prefetched": []}
    torch.randn(count, generator=gen)   # warm-up: the first call allocates
    for r in range(rounds):
        times["randn"].append(_timed(lambda: torch.randn(count, generator=gen)))
        cold = NormalStream(r, block=count)
        times["take_cold"].append(_timed(lambda: cold.take((count,))))
        cold.close()
        warm = NormalStream(r, block=count)
        warm.prefetch(count)
        time.sleep(0.2)          # the caller busy elsewhere while the block is made
        times["take_prefetched"].append(_timed(lambda: warm.take((count,))))
        warm.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=LENET_STEP)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = measure(args.count, args.rounds)
    summary = {k: {"median_ms": 1e3 * statistics.median(v), "best_ms": 1e3 * min(v)}
               for k, v in times.items()}
    print(f"{args.count:,} normals, torch {torch.__version__}, {args.threads} thread(s); "
          f"ms per call, median (best) of {args.rounds}")
    for k, s in summary.items():
        print(f"{k:>16} {s['median_ms']:8.2f} ({s['best_ms']:.2f})")
    if args.json:
        print(json.dumps({"count": args.count, "threads": args.threads, "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
