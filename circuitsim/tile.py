"""Solve one 1T1R tile read in ngspice, and the ideal crossbar it is compared against.

``solve_tile`` renders the bit-serial transient deck (``netlists.array.render_tile_deck``),
runs it through a runner (:class:`~circuitsim.interfaces.SpiceRunner`, such as
:class:`circuitsim.runner.Runner`) and returns the ADC codes, the accumulated front-end
voltages and the TIA output sampled at the end of every input bit.

``ideal_accumulated_v`` / ``ideal_codes`` are the reference: a linear crossbar with
conductances ``g`` (no wires, no driver resistance, perfect virtual ground, no rails), the same
binary-weighted multi-cycle accumulation and the same quantizer without offset or INL.
``quantize`` is the ADC model's transfer function (``netlists.adc_model``), documented to equal
the deck's quantizer expression (``netlists.periphery.adc_quantizer_subckt``; a test checks it).

Not in the solve: ``ADCParams.noise_v_rms`` (the deck is deterministic; conversion noise
belongs to whoever draws samples from these results), and anything time-varying in the
cells (the RRAM state is frozen: ``rram_frozen``).

Cost: the cells dominate. Per Newton iteration each cell evaluates a BSIM4 transistor and
``rram_frozen`` (three B-sources with exp/pow and a thermal node), the more expensive of the
two, and KLU refactorises the whole grid; a transient needs ~100 Newton iterations per input
bit (see ``netlists.array.ReadTiming``), so its time grows with the number of cells and with
``steps_per_bit``. What a solve takes, and what a finer step changes:
``benchmarks/bench_spice.py``, figures in ``benchmarks/README.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitsim.interfaces import SpiceRunner
from netlists.adc_model import adc_model
from netlists.array import (
    check_inputs,
    read_timing,
    render_cell_read_deck,
    render_tile_deck,
)
from netlists.config import ADCParams, HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import SimResult

__all__ = [
    "TileResult",
    "render_tile",
    "solve_tile",
    "quantize",
    "ideal_accumulated_v",
    "ideal_codes",
    "measure_cell_conductance",
    "level_table",
    "random_tile",
]


@dataclass(frozen=True)
class TileResult:
    """What one bit-serial read of a tile produced.

    ``codes``: (cols,) int ADC codes. ``accumulated_v``: (cols,) front-end voltage ``D_j``
    at the end, V. ``tia_out_v``: (input_bits, cols) TIA output at the sampling instant of
    each bit (bit 0 = LSB first), V; negative for a positive column current, as a TIA's
    output is. ``solve_seconds``: wall time of the ngspice solve (the runner's
    ``SimResult.seconds``: worker start-up excluded).
    """

    codes: np.ndarray
    accumulated_v: np.ndarray
    tia_out_v: np.ndarray
    solve_seconds: float


def render_tile(hw: HardwareConfig, states: object, x: object, *,
                solver: SolverConfig | None = None, name: str = "tile",
                **variations: Any) -> str:
    """The deck ``solve_tile`` runs; see :func:`netlists.array.render_tile_deck`."""
    return render_tile_deck(hw, states, x, solver=solver, name=name, **variations)


def solve_tile(hw: HardwareConfig, states: object, x: object, *, runner: SpiceRunner,
               solver: SolverConfig | None = None, name: str = "tile",
               tia_offset_v: object = None, adc_offset_v: object = None,
               adc_inl_lsb: object = None) -> TileResult:
    """Solve one bit-serial read: ``states`` (rows, cols) cell states, ``x`` (rows,) inputs.

    ``solver`` sets the transient step (``steps_per_bit``); by default the runner's own
    solver settings, else :class:`SolverConfig`'s defaults. The optional per-column TIA
    offsets and per-ADC offsets/INL are passed to the deck.
    """
    if solver is None:
        solver = getattr(runner, "solver", None)
        if not isinstance(solver, SolverConfig):
            solver = SolverConfig()
    text = render_tile_deck(hw, states, x, solver=solver, name=name,
                            tia_offset_v=tia_offset_v, adc_offset_v=adc_offset_v,
                            adc_inl_lsb=adc_inl_lsb)
    start = time.perf_counter()
    result = runner.run(text, name=name)
    # The runner's own figure excludes worker start-up; a plain runner may not report one.
    elapsed = float(getattr(result, "seconds", time.perf_counter() - start))

    cols = hw.array.cols
    timing = read_timing(hw.drive)
    t = _vector(result, "time", name)
    if t.size < 2 or abs(t[-1] - timing.t_stop_s) > 1e-6 * timing.t_stop_s:
        raise SimulatorError(
            f"the transient ended at t = {t[-1] if t.size else float('nan')!r} s instead of "
            f"{timing.t_stop_s!r} s", netlist=name)
    acc = np.array([_vector(result, f"v(acc{j})", name)[-1] for j in range(cols)])
    code_v = np.array([_vector(result, f"v(code{j})", name)[-1] for j in range(cols)])
    codes = np.rint(code_v)
    if np.any(np.abs(code_v - codes) > 1e-6):
        raise SimulatorError(f"ADC codes are not whole numbers: {code_v!r}", netlist=name)
    ts = timing.sample_times_s()
    tia = np.stack([np.interp(ts, t, _vector(result, f"v(tout{j})", name))
                    for j in range(cols)], axis=1)
    return TileResult(codes=codes.astype(np.int64), accumulated_v=acc, tia_out_v=tia,
                      solve_seconds=elapsed)


def _vector(result: SimResult, key: str, name: str) -> np.ndarray:
    try:
        vec = np.asarray(result[key], dtype=float)
    except KeyError:
        raise SimulatorError(f"ngspice returned no vector {key!r}", netlist=name) from None
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise SimulatorError(f"vector {key!r} is empty or not finite", netlist=name)
    return vec


def quantize(adc: ADCParams, d_v: object, *, offset_v: object = 0.0,
             inl_lsb: object = 0.0) -> np.ndarray:
    """int64 codes of accumulated voltages ``d_v``: the ADC model's transfer
    (``netlists.adc_model``; the same expression as the deck's quantizer)."""
    return adc_model(adc).quantize(d_v, offset_v=offset_v, inl_lsb=inl_lsb)


def ideal_accumulated_v(hw: HardwareConfig, g_siemens: object, x: object) -> np.ndarray:
    """``D_j = R_f * v_read * sum_i g_ij x_i / 2^input_bits`` of an ideal linear crossbar.

    That is the multi-cycle front-end's ``sum_k 2^(k - input_bits) V_k`` with
    ``V_k = R_f * v_read * sum_i g_ij bit_k(x_i)``. ``g_siemens``: (rows, cols).
    """
    g = _check_g(hw, g_siemens)
    xs = check_inputs(hw, x).astype(float)
    return (hw.tia.r_feedback_ohm * hw.drive.v_read_v * (xs @ g)
            / 2.0 ** hw.drive.input_bits)


def ideal_codes(hw: HardwareConfig, g_siemens: object, x: object) -> np.ndarray:
    """ADC codes (cols,) of the ideal crossbar: :func:`quantize` without offset or INL."""
    return adc_model(hw).quantize(ideal_accumulated_v(hw, g_siemens, x))


def _check_g(hw: HardwareConfig, g_siemens: object) -> np.ndarray:
    g = np.asarray(g_siemens, dtype=float)
    shape = (hw.array.rows, hw.array.cols)
    if g.shape != shape:
        raise ConfigError(f"g_siemens has shape {g.shape}; the tile needs (rows, cols) = "
                          f"{shape}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ConfigError("g_siemens must be finite and non-negative")
    return g


def measure_cell_conductance(hw: HardwareConfig, n_values: object, *,
                             runner: SpiceRunner, name: str = "cell_read") -> np.ndarray:
    """Read conductance ``I / v_read`` of whole 1T1R cells (RRAM + access NMOS), solved in
    ngspice, for each state in ``n_values``; same shape as ``n_values``.

    This is the ``g`` of a crossbar whose only non-ideality is the cell's own nonlinearity
    and transistor, the natural input to :func:`ideal_codes`.
    """
    n = np.asarray(n_values, dtype=float)
    result = runner.run(render_cell_read_deck(hw, n, name=name), name=name)
    flat = n.ravel()
    current = np.array([-_vector(result, f"i(vm{k})", name)[-1] for k in range(flat.size)])
    return (current / hw.drive.v_read_v).reshape(n.shape)


def level_table(hw: HardwareConfig, runner: SpiceRunner) -> tuple[np.ndarray, np.ndarray]:
    """(states, read conductances in S) of the programmable levels ``hw.levels``: evenly
    spaced in conductance over their window inside the 1T1R cell's. Two ngspice ``.op``
    runs: the cell's conductance curve over the state, then the level states themselves (so
    that ``g`` is solved, not interpolated)."""
    from circuitsim.device import cell_conductance_curve

    n_grid, g_grid = cell_conductance_curve(hw, runner=runner)
    if np.any(np.diff(g_grid) <= 0):
        raise SimulatorError("the cell's read conductance is not monotonic in the state",
                             netlist="cell_curve")
    level_g = hw.levels.conductances((g_grid[0], g_grid[-1]))
    states = np.clip(np.interp(level_g, g_grid, n_grid), hw.device.n_min, hw.device.n_max)
    g = measure_cell_conductance(hw, states, runner=runner, name="array_levels")
    return states, g


def random_tile(hw: HardwareConfig, *, runner: SpiceRunner, seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random map of the programmable levels (:func:`level_table`) and a random
    ``drive.input_bits`` input per row: (states, cell read conductances in S, inputs)."""
    level_states, level_g = level_table(hw, runner)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, hw.levels.count, size=(hw.array.rows, hw.array.cols))
    x = rng.integers(0, 2 ** hw.drive.input_bits, size=hw.array.rows)
    return level_states[pick], level_g[pick], x
