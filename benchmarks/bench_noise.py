"""Read-noise draws: what a step's normals cost with torch's generator and with the
counter-based one (``surrogate.normals``), stored or computed inside the conversion.

Per ``--count`` standard normals (default: the 1.2 G conversions of a VGG-8 training step
at batch 64, scaled down to 16 M), seconds on the CPU:

* ``randn``: one ``torch.randn(count)`` call (torch's Mersenne Twister, one core);
* ``take``: ``NormalStream.take`` (the counter-based normals, stored, on all cores);
* ``in the conversion``: what the fused conversion (``surrogate.fused.pair_sums``) spends
  on its noise, per normal: the kernel with noise less the kernel without, over as many
  conversions as ``count``.

Median of ``--rounds`` rounds (best in brackets); ``--threads`` torch and numba threads
(default: all cores).

Usage: ``python benchmarks/bench_noise.py [--count N] [--rounds R] [--threads T] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numba
import torch

from surrogate import fused
from surrogate.normal_stream import NormalStream

#: Normals per call (a VGG-8 step draws about 75 times as many).
COUNT = 1 << 24


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(count: int, rounds: int) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    stream = NormalStream(0)
    tr, rows = 16, 512                                  # a conversion's shape: tile rows x pairs
    n = max(1, count // (2 * tr * rows))
    g = torch.Generator().manual_seed(1)
    d = torch.rand(tr, 2 * rows, n, generator=g) * 200
    off, nscale = torch.rand(tr, 2 * rows, generator=g), torch.rand(tr, 2 * rows, generator=g)
    var, scale = torch.rand(tr, n, generator=g), torch.ones(tr, rows // 32)

    def convert(noisy: bool) -> None:
        fused.pair_sums(d, off, var, nscale, 0.1, 255, scale, key=stream.key, base=0,
                        n_all=n, b0=0, noisy=noisy)

    torch.randn(count, generator=gen)                   # warm-up: allocation, compilation
    stream.take((count,))
    convert(True)
    convert(False)
    times: dict[str, list[float]] = {"randn": [], "take": [], "in the conversion": []}
    for _ in range(rounds):
        times["randn"].append(_timed(lambda: torch.randn(count, generator=gen)))
        times["take"].append(_timed(lambda: stream.take((count,))))
        per = (_timed(lambda: convert(True)) - _timed(lambda: convert(False))) \
            / (2 * tr * rows * n)
        times["in the conversion"].append(per * count)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print one JSON object as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    times = measure(args.count, args.rounds)
    summary = {k: {"median_ms": 1e3 * statistics.median(v), "best_ms": 1e3 * min(v),
                   "ns_per_normal": 1e9 * statistics.median(v) / args.count}
               for k, v in times.items()}
    print(f"{args.count:,} normals, torch {torch.__version__}, numba {numba.__version__}, "
          f"{args.threads} thread(s); ms per call, median (best) of {args.rounds}")
    for k, s in summary.items():
        print(f"{k:>18} {s['median_ms']:8.1f} ({s['best_ms']:.1f})   "
              f"{s['ns_per_normal']:.2f} ns a normal")
    if args.json:
        print(json.dumps({"count": args.count, "threads": args.threads, "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
