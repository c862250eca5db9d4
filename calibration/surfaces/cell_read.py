"""Surface ``cell_read``: 1T1R read current versus state, cell voltage and gate voltage.

What is solved
--------------
The project's own read cell (``netlists.periphery.cell_subckt``: the frozen-state RRAM
``rram_frozen`` in series with the BSIM4 access NMOS) in ngspice, as the tile deck uses it.
One ``.dc`` deck per gate voltage holds one independent cell per state, all between one
swept row-line node and their own grounded column-line nodes
(``netlists.calibration_decks.render_cell_sweep_deck``), so a single SPICE run gives the
current of every state at every cell voltage. One more run, at exactly the nominal read
(``drive.v_read_v`` and ``2 v_read_v``, gate at ``array.v_gate_read_v``), gives the
read conductance and nonlinearity without interpolation. ``n_v_gate + 1`` runs in all.

Axes
----
``state``   (1e26 m^-3) ``n_states`` values evenly over ``[device.n_min, device.n_max]``.
``v_cell``  (V) the voltage across the cell, row-line node minus column-line node:
            ``n_v_cell`` values evenly over ``[v_cell_rel_min, v_cell_rel_max] * v_read_v``
            (default -0.25 .. 2 reads: what a cell sees after IR drop on the row line and a
            virtual-ground error on the column, down to slightly reversed).
``v_gate``  (V) the gate voltage with the column-line node (the transistor's source during a
            read) as reference: ``n_v_gate`` values evenly over
            ``v_gate_read_v + [v_gate_delta_min_v, v_gate_delta_max_v]``. The body is tied to
            the column node's potential (ground); a real column sits millivolts above ground,
            whose body effect the table leaves out.

Datasets
--------
``current``      (A) [state, v_cell, v_gate]: cell current, positive from the row line through
                 the RRAM and transistor into the column line.
``g_read``       (S) [state]: ``I(v_read) / v_read`` at the nominal gate: the effective
                 conductance of each programmable level, as ``circuitsim.tile
                 .measure_cell_conductance`` defines it.
``nonlinearity`` (1) [state]: ``g(2 v_read) / g(v_read) - 1`` at the nominal gate, with
                 ``g(v) = I(v) / v``: the relative rise of the chord conductance from one read
                 to twice the read voltage (the tunnel barrier's ``sinh`` raises it, the
                 transistor's on-resistance, rising with drain voltage, lowers it).

Validity: the frozen model is isothermal (no self-heating) and meant for reads; cell voltages
beyond ``FROZEN_MODEL_MAX_V`` (0.5 V) are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid
from netlists.calibration_decks import (
    check_count,
    check_range,
    linear_values,
    render_cell_sweep_deck,
)
from netlists.config import HardwareConfig
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["CellReadGrid", "CellReadSurface", "SURFACE", "FROZEN_MODEL_MAX_V"]

#: Largest |cell voltage| (V) the table may hold: ``rram_frozen`` leaves out self-heating,
#: which is negligible at a read (~0.14 K at 0.1 V) but not above ~0.5 V (netlists/device.py).
FROZEN_MODEL_MAX_V = 0.5
#: Allowed span of the relative cell-voltage bounds, in reads: a sweep wider than five read
#: voltages either way is no longer a read.
_V_CELL_REL_LIMIT = 5.0
#: Allowed gate offsets from the nominal read gate voltage, V.
_V_GATE_DELTA_LIMIT_V = 2.5
#: Gate voltages the transistor card is meant for (ArrayParams.v_gate_read_v's range), V.
_V_GATE_RANGE_V = (0.0, 5.0)


@dataclass(frozen=True)
class CellReadGrid:
    """Sweep grid of ``cell_read``; validated at construction (ConfigError naming the field).

    ``n_states`` states over the device window; ``n_v_cell`` cell voltages over
    ``[v_cell_rel_min, v_cell_rel_max]`` read voltages; ``n_v_gate`` gate voltages over
    ``v_gate_read_v + [v_gate_delta_min_v, v_gate_delta_max_v]``.
    """

    n_states: int = 17
    n_v_cell: int = 19
    v_cell_rel_min: float = -0.25
    v_cell_rel_max: float = 2.0
    n_v_gate: int = 5
    v_gate_delta_min_v: float = -0.25
    v_gate_delta_max_v: float = 0.25

    def __post_init__(self) -> None:
        check_count("cell_read.n_states", self.n_states, hi=4096)
        check_count("cell_read.n_v_cell", self.n_v_cell, hi=10_000)
        check_count("cell_read.n_v_gate", self.n_v_gate, hi=201)
        check_range(("cell_read.v_cell_rel_min", "cell_read.v_cell_rel_max"),
                    self.v_cell_rel_min, self.v_cell_rel_max,
                    allowed=(-_V_CELL_REL_LIMIT, _V_CELL_REL_LIMIT), unit="x v_read_v")
        check_range(("cell_read.v_gate_delta_min_v", "cell_read.v_gate_delta_max_v"),
                    self.v_gate_delta_min_v, self.v_gate_delta_max_v,
                    allowed=(-_V_GATE_DELTA_LIMIT_V, _V_GATE_DELTA_LIMIT_V), unit="V")


_PRESET_GRIDS = {
    # 5 states x 10 voltages (steps of a quarter read) x 3 gates: 4 tiny SPICE runs
    "tiny": CellReadGrid(n_states=5, n_v_cell=10, n_v_gate=3),
    # 65 states, steps of 1/20 read, 7 gates 0.1 V apart: 8 runs
    "chip": CellReadGrid(n_states=65, n_v_cell=46, n_v_gate=7,
                         v_gate_delta_min_v=-0.3, v_gate_delta_max_v=0.3),
    # 129 states, steps of 1/40 read, 9 gates 0.1 V apart: 10 runs
    "paper-sim": CellReadGrid(n_states=129, n_v_cell=91, n_v_gate=9,
                              v_gate_delta_min_v=-0.4, v_gate_delta_max_v=0.4),
}


def _states(hw: HardwareConfig, grid: CellReadGrid) -> np.ndarray:
    return linear_values(hw.device.n_min, hw.device.n_max, grid.n_states)


def _v_cell_bounds(hw: HardwareConfig, grid: CellReadGrid) -> tuple[float, float]:
    v_read = hw.drive.v_read_v
    lo, hi = grid.v_cell_rel_min * v_read, grid.v_cell_rel_max * v_read
    limit = min(FROZEN_MODEL_MAX_V, hw.device.v_valid_max_v)
    for field, rel, v in (("v_cell_rel_min", grid.v_cell_rel_min, lo),
                          ("v_cell_rel_max", grid.v_cell_rel_max, hi)):
        if abs(v) > limit:
            raise ConfigError(
                f"cell_read.{field} = {rel!r} reads of drive.v_read_v = {v_read!r} V is "
                f"{v!r} V, outside the frozen read model's validity of +-{limit!r} V")
    return lo, hi


def _v_gates(hw: HardwareConfig, grid: CellReadGrid) -> np.ndarray:
    nominal = hw.array.v_gate_read_v
    gates = nominal + linear_values(grid.v_gate_delta_min_v, grid.v_gate_delta_max_v,
                                    grid.n_v_gate)
    lo, hi = _V_GATE_RANGE_V
    if gates[0] < lo or gates[-1] > hi:
        raise ConfigError(
            f"cell_read.v_gate_delta = [{grid.v_gate_delta_min_v!r}, "
            f"{grid.v_gate_delta_max_v!r}] V around array.v_gate_read_v = {nominal!r} V gives "
            f"gate voltages [{gates[0]!r}, {gates[-1]!r}] V outside [{lo:g}, {hi:g}] V")
    return gates


def _vector(result: Any, key: str, name: str, size: int) -> np.ndarray:
    """One result vector, checked: present, ``size`` long, finite."""
    try:
        vec = np.asarray(result[key], dtype=float)
    except KeyError:
        raise SimulatorError(f"ngspice returned no vector {key!r}", netlist=name) from None
    if vec.shape != (size,) or not np.all(np.isfinite(vec)):
        raise SimulatorError(f"vector {key!r} has shape {vec.shape} (expected ({size},)) or "
                             "holds non-finite values", netlist=name)
    return vec


class CellReadSurface:
    """The ``cell_read`` surface (see the module docstring)."""

    name = "cell_read"
    grid_type = CellReadGrid

    def grid(self, preset: str) -> CellReadGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: CellReadGrid) -> list[dict[str, Any]]:
        """One job per gate voltage (a ``.dc`` over the cell voltage), then the nominal read."""
        _v_cell_bounds(hw, grid)
        jobs: list[dict[str, Any]] = [{"kind": "sweep", "gate_index": k, "v_gate_v": float(v)}
                                      for k, v in enumerate(_v_gates(hw, grid))]
        jobs.append({"kind": "nominal", "v_gate_v": float(hw.array.v_gate_read_v)})
        return jobs

    def _deck(self, hw: HardwareConfig, grid: CellReadGrid, point: Mapping[str, Any]
              ) -> tuple[str, str, int]:
        states = _states(hw, grid)
        if point["kind"] == "sweep":
            lo, hi = _v_cell_bounds(hw, grid)
            name = f"cell_read_gate{int(point['gate_index'])}"
            n_v = grid.n_v_cell
        elif point["kind"] == "nominal":
            lo, hi = hw.drive.v_read_v, 2.0 * hw.drive.v_read_v
            name = "cell_read_nominal"
            n_v = 2
        else:
            raise ConfigError(f"cell_read: unknown job kind {point['kind']!r}")
        deck = render_cell_sweep_deck(hw, states, float(point["v_gate_v"]), lo, hi, n_v,
                                      name=name)
        return deck, name, n_v

    def solve(self, hw: HardwareConfig, grid: CellReadGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        """Current (n_states, n_v) of every cell at every swept voltage of this job."""
        deck, name, n_v = self._deck(hw, grid, point)
        result = runner.run(deck, name=name)
        v_row = _vector(result, "v(row)", name, n_v)
        lo, hi = (hw.drive.v_read_v, 2.0 * hw.drive.v_read_v) if point["kind"] == "nominal" \
            else _v_cell_bounds(hw, grid)
        expected = linear_values(lo, hi, n_v)
        if np.max(np.abs(v_row - expected)) > 1e-9 * max(1.0, float(np.max(np.abs(expected)))):
            raise SimulatorError(f"the swept cell voltage {v_row!r} is not the grid "
                                 f"{expected!r}", netlist=name)
        current = np.stack([_vector(result, f"i(vcol{k})", name, n_v)
                            for k in range(grid.n_states)])
        return {"current_a": current, "v_cell_v": v_row}

    def assemble(self, hw: HardwareConfig, grid: CellReadGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        sweeps = [(p, r) for p, r in zip(points, results) if p["kind"] == "sweep"]
        nominal = [r for p, r in zip(points, results) if p["kind"] == "nominal"]
        if len(sweeps) != grid.n_v_gate or len(nominal) != 1:
            raise ConfigError(f"cell_read: expected {grid.n_v_gate} sweep jobs and 1 nominal "
                              f"job, got {len(sweeps)} and {len(nominal)}")
        sweeps.sort(key=lambda pr: int(pr[0]["gate_index"]))
        current = np.stack([np.asarray(r["current_a"], dtype=float) for _, r in sweeps], axis=-1)
        v_read = hw.drive.v_read_v
        i_nom = np.asarray(nominal[0]["current_a"], dtype=float)
        g_read = i_nom[:, 0] / v_read
        g_double = i_nom[:, 1] / (2.0 * v_read)
        lo, hi = _v_cell_bounds(hw, grid)
        axes = {
            "state": Array(_states(hw, grid), "1e26 m^-3",
                           "RRAM state N (oxygen-vacancy concentration of the bulk), evenly "
                           "over [device.n_min, device.n_max]"),
            "v_cell": Array(linear_values(lo, hi, grid.n_v_cell), "V",
                            "voltage across the 1T1R cell, row-line node minus column-line "
                            "node"),
            "v_gate": Array(_v_gates(hw, grid), "V",
                            "word-line (gate) voltage, referred to the column-line node"),
        }
        datasets = {
            "current": Array(current, "A",
                             "cell current, positive from the row line into the column line "
                             "(frozen-state RRAM + BSIM4 access NMOS, solved in ngspice)"),
            "g_read": Array(g_read, "S",
                            f"effective read conductance I(v_read)/v_read at v_read = "
                            f"{v_read!r} V and the nominal gate {hw.array.v_gate_read_v!r} V"),
            "nonlinearity": Array(g_double / g_read - 1.0, "1",
                                  "g(2 v_read)/g(v_read) - 1 at the nominal gate, "
                                  "g(v) = I(v)/v: relative rise of the chord conductance "
                                  "from one read to twice the read voltage"),
        }
        dims = {"current": ("state", "v_cell", "v_gate"), "g_read": ("state",),
                "nonlinearity": ("state",)}
        attrs = {
            "v_read_v": v_read,
            "v_gate_read_v": hw.array.v_gate_read_v,
            "model": "rram_frozen (isothermal, state held) + BSIM4 access NMOS (cell_1t1r)",
            "v_cell_valid_max_v": min(FROZEN_MODEL_MAX_V, hw.device.v_valid_max_v),
            "representation": "current on a regular (state, v_cell, v_gate) grid: "
                              "interpolate (multi)linearly; values outside the axes are "
                              "not in the table",
            "spice_runs": len(points),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: CellReadGrid) -> list[str]:
        """Every job's deck (all of them: they are small)."""
        return [self._deck(hw, grid, p)[0] for p in self.points(hw, grid)]


SURFACE = CellReadSurface()
