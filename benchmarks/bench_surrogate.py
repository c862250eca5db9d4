"""Surrogate-side benchmark: the surrogate tile's read against a plain matmul, and ngspice.

For a 64x64 tile (the ``chip`` table) and a 256x64 tile (the ``paper-sim`` geometry: the
chip table read as ``TileSurrogate(table, rows=256)``, or a paper-sim table given with
``--table-paper``), with conductances on random programmable levels (128 over the read
window) and random 8-bit inputs at batch ``--batch`` (1024), float32 on the CPU:

* ``matmul``: ``torch.matmul`` of ``x (B, R) @ w (R, C)``, the digital layer's cost; every
  ratio below is against it;
* ``read``: ``TileSurrogate.read(x, tiles, check=False)`` without noise, on the path that
  ``prepare`` picks for the tile (``shortcut``: one lookup and one GEMM; ``exact``: eight
  bit-planes through the TIA's DC transfer, for tiles whose TIAs can reach a rail);
* ``read+noise``: the same with read noise drawn from a ``torch.Generator``;
* ``columns`` / ``columns+noise``: the analog layers' read, ``codes_columns`` (inputs with
  the vectors along the last axis, ADC codes out; shortcut tiles only);
* ``shortcut`` / ``exact``: the read forced onto each path (``PreparedTiles.linear`` set
  all True / all False: timings only, the forced shortcut is not a valid read of a tile
  that saturates);
* ``compiled``: ``torch.compile`` of the read (``--no-compile`` skips it; a compiler
  failure is reported, not raised);
* ``stage:*``: pieces of the two paths on inputs made ready beforehand: the shortcut's
  ``lookup`` (inputs to ``lut``), ``gemm`` and ``quantize``; the exact path's
  ``plane-gemm`` (the eight planes' currents in one batched GEMM; the rest of that path is
  the TIA transfer's interpolation);
* ``prepare``: the effective conductances of one tile, ``method="exact"`` and ``"fast"``;
* with ``--spice`` (default; ``--no-spice`` skips it): one whole-tile ngspice solve of a
  random 64x64 tile (``circuitsim.tile.solve_tile``), the speed-up per VMM against the
  surrogate's ``read`` (its time at batch B over B), and the surrogate's error on that tile.

Times are medians of ``--repeat`` rounds; in each round every candidate runs once (each
over enough calls for ~5 ms), in an order rotated from round to round, and its ratio to the
matmul of the same round is taken: this machine is shared and noisy, so ratios are measured
side by side and their median reported. The best (least) time of each and the ratio of the
bests are reported too: on a loaded machine they are the steadier estimate of the cost
itself.

Usage: ``python benchmarks/bench_surrogate.py [--table PATH] [--table-paper PATH]
[--batch 1024] [--repeat 30] [--no-spice] [--no-compile] [--json]``. A human table goes to
stderr; with ``--json`` one JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench_spice import median_time
from calibration.store import Table, open_table
from surrogate.tile import TileSurrogate

LEVELS = 128
_TARGET_S = 0.005


def _calls_for(fn: Callable[[], Any], target_s: float = _TARGET_S) -> int:
    """How many calls of ``fn`` take about ``target_s`` (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(10000, int(target_s / once)))


def interleaved(candidates: dict[str, Callable[[], Any]], *, reference: str,
                repeat: int) -> dict[str, dict[str, float]]:
    """Per candidate: the median seconds per call and the median of its per-round ratio to
    ``reference``, and the best (least) seconds and the ratio of the bests; measured in
    rounds that run every candidate once, in rotated order."""
    names = list(candidates)
    calls = {name: _calls_for(fn) for name, fn in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = candidates[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    ref = times[reference]
    return {name: {"seconds": statistics.median(times[name]),
                   "ratio": statistics.median(t / q for t, q in zip(times[name], ref)),
                   "best_seconds": min(times[name]),
                   "best_ratio": min(times[name]) / min(ref)}
            for name in names}


def _level_map(s: TileSurrogate, rng: np.random.Generator) -> torch.Tensor:
    lo, hi = s.window_s
    levels = np.linspace(lo, hi, LEVELS)
    return torch.as_tensor(levels[rng.integers(0, LEVELS, size=(s.rows, s.cols))],
                           dtype=s.dtype)


def bench_geometry(label: str, table: Table, *, rows: int | None, batch: int, repeat: int,
                   compile_read: bool, seed: int = 0) -> dict[str, Any]:
    """Every timing of the module docstring for one tile geometry (``rows``: override the
    table's row count)."""
    s = TileSurrogate(table, rows=rows)
    fast = TileSurrogate(table, rows=rows, method="fast")
    rng = np.random.default_rng(seed)
    g = _level_map(s, rng)
    x = torch.as_tensor(rng.integers(0, s.input_levels, size=(batch, s.rows)),
                        dtype=s.dtype)
    w = torch.randn((s.rows, s.cols), generator=torch.Generator().manual_seed(seed),
                    dtype=s.dtype)
    prep_repeat = max(3, repeat // 10)
    prep_exact, prep_fast = [], []
    for _ in range(prep_repeat):  # interleaved, like the reads
        prep_exact.append(median_time(lambda: s.prepare(g), 1))
        prep_fast.append(median_time(lambda: fast.prepare(g), 1))
    tiles = s.prepare(g)
    path = "shortcut" if tiles.all_linear else "exact"
    forced = {
        "shortcut": dataclasses.replace(tiles, linear=torch.ones_like(tiles.linear)),
        "exact": dataclasses.replace(tiles, linear=torch.zeros_like(tiles.linear)),
    }
    gen = torch.Generator().manual_seed(seed + 1)
    # The stages of the two paths, on inputs made ready beforehand.
    idx = x.to(torch.long)
    lut = s.lut[idx]
    d = torch.matmul(lut, tiles.w_scaled) + tiles.offset_v
    v = s.hw.drive.v_read_v * torch.swapaxes(s.planes[idx], -1, -2) - s.v_offset_v
    candidates: dict[str, Callable[[], Any]] = {
        "matmul": lambda: torch.matmul(x, w),
        "read": lambda: s.read(x, tiles, check=False),
        "read+noise": lambda: s.read(x, tiles, check=False, generator=gen),
        "shortcut": lambda: s.read(x, forced["shortcut"], check=False),
        "exact": lambda: s.read(x, forced["exact"], check=False),
        "stage:lookup": lambda: s.lut[x.to(torch.long)],
        "stage:gemm": lambda: torch.matmul(lut, tiles.w_scaled),
        "stage:quantize": lambda: s.quantize(d),
        "stage:plane-gemm": lambda: torch.matmul(v, tiles.w[None]),
    }
    if tiles.all_linear:
        # the training layers' read: the vectors along the last axis, codes out
        weights, offset = tiles.columns()
        xt = x.T.to(torch.int32).contiguous()
        candidates["columns"] = lambda: s.codes_columns(xt, weights, offset, check=False)
        candidates["columns+noise"] = lambda: s.codes_columns(xt, weights, offset,
                                                              check=False, generator=gen)
    compiled: dict[str, Any] = {"enabled": compile_read, "error": None}
    if compile_read:
        # Quiet: dynamo logs the graph break at ``PreparedTiles.all_linear`` (a bool() of a
        # tensor) as a warning; the code before and after it is compiled all the same.
        torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
        start = time.perf_counter()
        try:
            fn = torch.compile(lambda xx: s.read(xx, tiles, check=False))
            got = fn(x)  # the first call compiles
        except Exception as err:  # noqa: BLE001 - reported, the benchmark goes on
            compiled["error"] = f"{type(err).__name__}: {err}"
        else:
            compiled["compile_seconds"] = time.perf_counter() - start
            compiled["codes_equal"] = bool(torch.equal(
                got.codes, s.read(x, tiles, check=False).codes))
            candidates["compiled"] = lambda: fn(x)
    timed = interleaved(candidates, reference="matmul", repeat=repeat)
    return {
        "tile": f"{s.rows}x{s.cols}",
        "label": label,
        "table": str(table.path),
        "batch": batch,
        "path": path,
        "times": timed,
        "read_seconds_per_vmm": timed["read"]["seconds"] / batch,
        "prepare_exact_seconds": statistics.median(prep_exact),
        "prepare_fast_seconds": statistics.median(prep_fast),
        "compiled": compiled,
    }


def bench_spice(table: Table, read_seconds_per_vmm: float, *, seed: int = 0) -> dict[str, Any]:
    """One whole-tile ngspice solve of a random tile of the table's size, and the surrogate's
    error on it."""
    from circuitsim.runner import Runner, check_ngspice
    from circuitsim.tile import random_tile, solve_tile
    from surrogate.validate import table_solver

    info = check_ngspice()
    s = TileSurrogate(table, dtype=torch.float64)
    solver = table_solver(table)
    with Runner(solver) as runner:
        states, g, x = random_tile(s.hw, runner=runner, seed=seed)
        res = solve_tile(s.hw, states, x, runner=runner, solver=solver, name="bench_surrogate")
    read = s.read(torch.as_tensor(x, dtype=s.dtype)[None], s.prepare(torch.as_tensor(g)))
    err = (read.analog_v[0].numpy() - res.accumulated_v) / s.lsb_v
    return {
        "ngspice": info.version,
        "tile": f"{s.rows}x{s.cols}",
        "solve_seconds": res.solve_seconds,
        "speedup_per_vmm": res.solve_seconds / read_seconds_per_vmm,
        "max_error_lsb": float(np.max(np.abs(err))),
        "code_match": float(np.mean(read.codes[0].numpy() == res.codes)),
    }


def _default_table() -> Table:
    from calibration.calibrate import calibrate
    from netlists.config import preset

    res = calibrate(preset("chip"), preset="chip")
    return open_table(res.path, expected_hash=res.content_hash)


def _print_table(results: list[dict[str, Any]], spice: dict[str, Any] | None) -> None:
    out = sys.stderr
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32, batch "
          f"{results[0]['batch']}; ms per call; ratio to matmul (median of per-round ratios; "
          "ratio of the bests)", file=out)
    print(f"{'tile':>8} {'candidate':<17} {'median':>9} {'best':>9} {'ratio':>8} {'best':>8}",
          file=out)
    for r in results:
        for name, t in r["times"].items():
            label = f"{name} ({r['path']})" if name == "read" else name
            print(f"{r['tile']:>8} {label:<17} {t['seconds'] * 1e3:9.3f} "
                  f"{t['best_seconds'] * 1e3:9.3f} {t['ratio']:7.2f}x {t['best_ratio']:7.2f}x",
                  file=out)
    for r in results:
        c = r["compiled"]
        note = ("off" if not c["enabled"] else c["error"] or
                f"compiled in {c['compile_seconds']:.1f} s, codes equal: {c['codes_equal']}")
        print(f"{r['tile']:>8}: prepare exact {r['prepare_exact_seconds'] * 1e3:.2f} ms, fast "
              f"{r['prepare_fast_seconds'] * 1e3:.2f} ms per tile; torch.compile: {note}",
              file=out)
    if spice is not None:
        print(f"ngspice-{spice['ngspice']}: one {spice['tile']} tile solved in "
              f"{spice['solve_seconds']:.1f} s; the surrogate is {spice['speedup_per_vmm']:.3g}x "
              f"faster per VMM (at batch {results[0]['batch']}); its error on that tile: max "
              f"{spice['max_error_lsb']:.3f} LSB, codes {100 * spice['code_match']:.1f}% "
              "identical", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="calibration table of the 64x64 tile (default: the "
                                        "chip preset's, from the cache)")
    parser.add_argument("--table-paper", help="a paper-sim (256x64) table for the second "
                                              "geometry (default: the chip table at 256 rows)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--spice", action=argparse.BooleanOptionalAction, default=True,
                        help="solve one 64x64 tile in ngspice for the speed-up per VMM")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile of the read")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a loaded machine a "
                             "second thread waits for a core, and times come in whole "
                             "scheduler slices)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of stdout")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeat < 1 or args.threads < 1:
        parser.error("--batch, --repeat and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    chip = open_table(args.table) if args.table else _default_table()
    paper = open_table(args.table_paper) if args.table_paper else chip
    geometries = [("chip", chip, None),
                  ("paper-sim" if args.table_paper else "chip at 256 rows", paper,
                   None if args.table_paper else 256)]
    results = [bench_geometry(label, table, rows=rows, batch=args.batch, repeat=args.repeat,
                              compile_read=args.compile)
               for label, table, rows in geometries]
    spice = bench_spice(chip, results[0]["read_seconds_per_vmm"]) if args.spice else None
    _print_table(results, spice)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "results": results, "spice": spice}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
