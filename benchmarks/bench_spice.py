"""SPICE-side benchmark: how long the tile decks take to build and solve in ngspice.

For each tile size it reports, measured in one run on this machine:

* ``render``: time to generate the bit-serial transient deck (pure Python);
* ``op``: one operating-point solve of the tile with DC row voltages (one bit-plane);
* ``tran``: one bit-serial transient (8 input bits through TIAs and ADC front-ends);
* ``op re-solve`` / ``tran re-solve``: the same with new inputs on an already-loaded circuit
  (``Runner.load`` + ``alter`` + ``run``: saves the parse, not ngspice's set-up).

Then, for the (smaller) tiles of ``--steps-sizes``, the bit-serial transient
(``circuitsim.tile.solve_tile``) at each transient step of ``--steps-per-bit`` (the step is
``t_bit_s / steps_per_bit``) and whether the ADC codes are the same at every step; and for
the tiles of ``--nodeset-sizes``, the operating point with and without the deck's
``.nodeset`` initial guess of the TIA outputs; and for the tiles of ``--solver-sizes``, the
operating point with KLU and with ngspice's default Sparse 1.3 solver; and for each count
of ``--batch-cells``, one write-and-verify step of that many cells in one transient.

Usage: ``python benchmarks/bench_spice.py [--sizes 16x16,32x32,64x64,128x128,256x64]
[--steps-sizes 16x16,32x32] [--steps-per-bit 4,20] [--nodeset-sizes 16x16,32x32]
[--solver-sizes 32x32,64x64,128x128] [--batch-cells 20,100,400] [--json PATH]`` (an empty
list skips that part). Times are wall seconds, the median of ``--repeat`` solves (default 1
for the transient, 3 for the others); the machine is shared and noisy, so compare sizes
within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from circuitsim.runner import Runner, check_ngspice
from circuitsim.tile import solve_tile
from circuitsim.write_verify import run_batch
from netlists.array import _pwl_bits, bit_planes, render_tile_deck, render_tile_op_deck
from netlists.config import SolverConfig, preset
from netlists.programming_batch import BatchCell


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(rows: int, cols: int, *, runner: Runner, repeat: int) -> dict:
    hw = preset("chip").replace(array={"rows": rows, "cols": cols})
    rng = np.random.default_rng(0)
    states = rng.uniform(hw.device.n_min, hw.device.n_max, (rows, cols))
    x1, x2 = rng.integers(0, 256, rows), rng.integers(0, 256, rows)
    solver = SolverConfig()

    t_render = median_time(lambda: render_tile_deck(hw, states, x1, solver=solver), repeat)
    tran_deck = render_tile_deck(hw, states, x1, solver=solver)
    v1 = bit_planes(x1, 8)[7] * hw.drive.v_read_v
    v2 = bit_planes(x2, 8)[7] * hw.drive.v_read_v
    op_deck = render_tile_op_deck(hw, states, v1)

    t_op = median_time(lambda: runner.run(op_deck, name="bench_op"), repeat)
    with runner.load(op_deck, name="bench_op_loaded") as loaded:
        loaded.run()

        def op_resolve(flip=[False]) -> None:  # noqa: B006 - alternate the inputs
            flip[0] = not flip[0]
            loaded.alter({f"vrow{i}": float((v2 if flip[0] else v1)[i]) for i in range(rows)})
            loaded.run()

        t_op_re = median_time(op_resolve, repeat)

    t_tran = median_time(lambda: runner.run(tran_deck, name="bench_tran"), 1)
    planes2 = bit_planes(x2, 8)
    with runner.load(tran_deck, name="bench_tran_loaded") as loaded:
        pwl = {}
        for i in range(rows):
            text = _pwl_bits(planes2[:, i], hw.drive)
            pwl[f"vrow{i}"] = [float(v) for v in text[text.index("(") + 1:-1].split()]
        loaded.alter(pwl)
        t_tran_re = median_time(loaded.run, 1)
    return {"tile": f"{rows}x{cols}", "render_s": t_render, "op_s": t_op,
            "op_resolve_s": t_op_re, "tran_s": t_tran, "tran_resolve_s": t_tran_re}


def _tile(rows: int, cols: int):
    hw = preset("chip").replace(array={"rows": rows, "cols": cols})
    rng = np.random.default_rng(0)
    states = rng.uniform(hw.device.n_min, hw.device.n_max, (rows, cols))
    return hw, states, rng.integers(0, 256, rows)


def bench_steps(rows: int, cols: int, steps: list[int], *, runner: Runner) -> dict:
    """The bit-serial transient at each ``steps_per_bit``, and whether the codes agree."""
    hw, states, x = _tile(rows, cols)
    seconds, codes = {}, []
    for k in steps:
        start = time.perf_counter()
        res = solve_tile(hw, states, x, runner=runner, solver=SolverConfig(steps_per_bit=k))
        seconds[k] = time.perf_counter() - start
        codes.append(res.codes)
    same = all(np.array_equal(c, codes[0]) for c in codes)
    return {"tile": f"{rows}x{cols}", "tran_s_by_steps_per_bit": seconds, "same_codes": same}


def bench_nodeset(rows: int, cols: int, *, runner: Runner, repeat: int) -> dict:
    """One operating point with the deck's ``.nodeset`` guess and with it taken out."""
    hw, states, x = _tile(rows, cols)
    deck = render_tile_op_deck(hw, states, bit_planes(x, 8)[7] * hw.drive.v_read_v)
    bare = "\n".join(line for line in deck.splitlines()
                      if not line.lower().startswith(".nodeset"))
    if bare == deck:
        raise RuntimeError("the operating-point deck has no .nodeset line to take out")
    t_with = median_time(lambda: runner.run(deck, name="bench_nodeset"), repeat)
    t_without = median_time(lambda: runner.run(bare, name="bench_no_nodeset"), 1)
    return {"tile": f"{rows}x{cols}", "op_s": t_with, "op_without_nodeset_s": t_without}


def bench_solver(rows: int, cols: int, *, runner: Runner, repeat: int) -> dict:
    """One operating point with KLU (what the runner asks for) and with ngspice's default
    Sparse 1.3 matrix solver (``.options sparse`` after the runner's ``.options klu``)."""
    hw, states, x = _tile(rows, cols)
    deck = render_tile_op_deck(hw, states, bit_planes(x, 8)[7] * hw.drive.v_read_v)
    lines = deck.splitlines()
    end = max(i for i, line in enumerate(lines) if line.lower().startswith(".end"))
    sparse = "\n".join(lines[:end] + [".options klu", ".options sparse"] + lines[end:])
    runner.run(deck, name="bench_klu")  # the first solve of a deck loads the model code
    t_klu = median_time(lambda: runner.run(deck, name="bench_klu"), repeat)
    t_sparse = median_time(lambda: runner.run(sparse, name="bench_sparse"), repeat)
    return {"tile": f"{rows}x{cols}", "op_klu_s": t_klu, "op_sparse_s": t_sparse}


def bench_batch(cells: int, *, runner: Runner, repeat: int) -> dict:
    """One write-and-verify step (a SET pulse and a read) of ``cells`` cells in one
    transient (``circuitsim.write_verify.run_batch``), per cell."""
    hw = preset("chip")
    rng = np.random.default_rng(0)
    batch = [BatchCell(n0=float(n), kind="set", amplitude_v=2.0, kc=1.0, kd=1.0, wd=1.0)
             for n in rng.uniform(hw.device.n_min, hw.device.n_max, cells)]

    def step() -> None:
        run_batch(hw, batch, width_s=hw.drive.t_write_s, runner=runner, read_before=False,
                  max_cells_per_deck=cells)

    seconds = median_time(step, repeat)
    return {"cells": cells, "seconds": seconds, "ms_per_cell": 1e3 * seconds / cells}


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def _table(header: str, items: list, measure: Any, line: Any) -> list[dict]:
    """``measure`` each item, printing ``header`` (when there are items) and a ``line`` of
    each result as it comes."""
    results = []
    if items:
        print(header)
    for item in items:
        results.append(measure(item))
        print(line(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16x16,32x32,64x64,128x128,256x64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps-sizes", default="16x16,32x32")
    parser.add_argument("--steps-per-bit", default="4,20")
    parser.add_argument("--nodeset-sizes", default="16x16,32x32")
    parser.add_argument("--solver-sizes", default="",
                        help="tiles whose operating point is also solved with Sparse 1.3")
    parser.add_argument("--batch-cells", default="",
                        help="cells per write-and-verify transient to time, e.g. 20,100,400")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    info = check_ngspice()
    print(f"ngspice-{info.version} (KLU: {info.klu}); median wall seconds", file=sys.stderr)
    header = (f"{'tile':>8} {'render':>8} {'op':>8} {'op re':>8} {'tran':>8} {'tran re':>8}")
    print(header)
    rows = []
    with Runner() as runner:
        for r, c in _sizes(args.sizes):
            res = bench(r, c, runner=runner, repeat=args.repeat)
            rows.append(res)
            print(f"{res['tile']:>8} {res['render_s']:8.3f} {res['op_s']:8.3f} "
                  f"{res['op_resolve_s']:8.3f} {res['tran_s']:8.2f} {res['tran_resolve_s']:8.2f}",
                  flush=True)
        steps = [int(k) for k in args.steps_per_bit.split(",") if k]
        by_steps = []
        if steps and args.steps_sizes:
            print("tran by steps_per_bit " + " ".join(f"{k:>8}" for k in steps) + "  same codes")
        for r, c in _sizes(args.steps_sizes) if steps else []:
            res = bench_steps(r, c, steps, runner=runner)
            by_steps.append(res)
            print(f"{res['tile']:>21} " + " ".join(
                f"{res['tran_s_by_steps_per_bit'][k]:8.2f}" for k in steps)
                + f"  {res['same_codes']}", flush=True)
        nodeset = _table(
            f"{'tile':>8} {'op':>8} {'op without .nodeset':>20}", _sizes(args.nodeset_sizes),
            lambda rc: bench_nodeset(*rc, runner=runner, repeat=args.repeat),
            lambda res: f"{res['tile']:>8} {res['op_s']:8.3f} "
                        f"{res['op_without_nodeset_s']:20.3f}")
        solvers = _table(
            f"{'tile':>8} {'op KLU':>8} {'op Sparse':>10}", _sizes(args.solver_sizes),
            lambda rc: bench_solver(*rc, runner=runner, repeat=args.repeat),
            lambda res: f"{res['tile']:>8} {res['op_klu_s']:8.3f} {res['op_sparse_s']:10.3f}")
        batches = _table(
            f"{'cells':>8} {'step s':>8} {'ms/cell':>8}",
            [int(v) for v in args.batch_cells.split(",") if v],
            lambda cells: bench_batch(cells, runner=runner, repeat=args.repeat),
            lambda res: f"{res['cells']:>8} {res['seconds']:8.3f} {res['ms_per_cell']:8.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ngspice": info.version, "results": rows, "steps_per_bit": by_steps,
                       "nodeset": nodeset, "solvers": solvers, "batch": batches}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
