"""Surface ``tia``: the TIA's transfer, its virtual-ground error, and what a bit's sample sees.

What is solved
--------------
The project's TIA macro-model (``netlists.periphery.tia_subckt``: single-pole op-amp with
finite gain, gain-bandwidth, soft output rails and input offset, feedback resistor) in
ngspice, fed the way a column feeds it: a Norton source, the current ``i_in`` pushed into the
TIA input in parallel with a source resistance ``r_source_ohm`` to ground. ``i_in`` is the
column current a perfect virtual ground would take (what an ideal crossbar computes);
``r_source_ohm`` is a typical column seen from its TIA: ``rows`` cells in parallel, their
rows held by low-impedance drivers whether the input bit is 1 or 0, each cell at the middle
of the device's conductance window, ``1 / (rows * (g(n_min) + g(n_max)) / 2)`` with ``g`` the
device model's small-signal conductance (``netlists.device_model``). The access
transistor (~2 kohm in series with 25-250 kohm) and the column wire are left out of it: they
change it by < 10%, and it matters only through the noise gain ``1 + R_f / r_source_ohm``
(closed-loop bandwidth ``GBW / (1 + R_f / r_source_ohm)``, virtual-ground loading).

Two SPICE runs:

* ``dc``: a ``.dc`` sweep of ``i_in`` from beyond one rail to beyond the other
  (``netlists.calibration_decks.render_tia_dc_deck``): ``v_out`` and ``v_in``.
* ``pulse``: one TIA per ``i_in`` value in one ``.tran``
  (``render_tia_pulse_deck``), each fed two one-bit pulses of its current, shaped as the tile
  deck drives a row (rise over ``t_edge_s`` from the start of the bit, fall over the last
  ``t_edge_s``), with the tile deck's step (``t_bit_s / SolverConfig.steps_per_bit``, from the
  runner's solver) and ``uic``. The output is read at the front-end's sample instants
  (``netlists.array.ReadTiming.sample_times_s``: ``(k+1) T - 1.5 t_edge``), which are time
  points of the transient: bit 0 starts from rest (``v_out_sampled``), bit 1 follows an equal
  bit (``v_out_sampled_repeat``; its input only dips to zero for ``2 t_edge``).

Axes: ``i_in`` (A), ``n_i`` values evenly over ``[i_rel_min, i_rel_max] * i_full_scale`` with
``i_full_scale = max(|v_rail_low_v|, |v_rail_high_v|) / r_feedback_ohm`` (the current that
would put an ideal TIA's output on its farther rail); the default +-1.5 goes beyond both rails.
Beyond the axis the output stays on its rail (flat to within microvolts past 1.5 full
scales): clamping ``i_in`` to the axis is exact for ``v_out``; ``v_in`` keeps rising there
(the loop has lost its gain), with slope ``r_source || r_feedback`` (attribute
``r_in_saturated_ohm``).

Datasets, all [i_in]: ``v_out`` (V, settled DC output), ``v_in`` (V, the TIA input node:
the virtual-ground error, ``-v_out / A + v_offset`` while the loop has gain),
``v_out_sampled`` and ``v_out_sampled_repeat`` (V, the output at a bit's sample instant),
``settling_error`` (V, ``v_out_sampled - v_out``). Attributes: the TIA's parameters,
``r_source_ohm``, the timing, and ``settled_fraction`` / ``settled_fraction_repeat``: the
least-squares slope of the sampled against the settled output over the linear range (outputs
within 80% of the nearer rail), the fraction of a step the TIA has settled at the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid, result_vector, steps_per_bit
from netlists.array import read_timing
from netlists.calibration_decks import (
    check_count,
    check_range,
    linear_values,
    render_tia_dc_deck,
    render_tia_pulse_deck,
)
from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["TIAGrid", "TIASurface", "SURFACE", "source_resistance", "full_scale_current"]

#: Allowed input range, in full-scale currents either way.
_I_REL_LIMIT = 20.0
#: Share of the nearer rail within which the output counts as linear (settled_fraction).
_LINEAR_SHARE = 0.8


@dataclass(frozen=True)
class TIAGrid:
    """Sweep grid of ``tia``; validated at construction (ConfigError naming the field).

    ``n_i`` input currents over ``[i_rel_min, i_rel_max]`` full-scale currents.
    """

    n_i: int = 81
    i_rel_min: float = -1.5
    i_rel_max: float = 1.5

    def __post_init__(self) -> None:
        check_count("tia.n_i", self.n_i, hi=20_000)
        check_range(("tia.i_rel_min", "tia.i_rel_max"), self.i_rel_min, self.i_rel_max,
                    allowed=(-_I_REL_LIMIT, _I_REL_LIMIT), unit="x full-scale current")


_PRESET_GRIDS = {
    "tiny": TIAGrid(n_i=41),            # steps of 7.5% of full scale
    "chip": TIAGrid(n_i=241),           # 1.25%
    "paper-sim": TIAGrid(n_i=481),      # 0.625%
}


def full_scale_current(hw: HardwareConfig) -> float:
    """Current (A) that puts an ideal TIA's output on its farther rail."""
    t = hw.tia
    return max(abs(t.v_rail_low_v), abs(t.v_rail_high_v)) / t.r_feedback_ohm


def source_resistance(hw: HardwareConfig) -> float:
    """A typical column seen from its TIA, ohm (see the module docstring)."""
    g = device_model(hw).small_signal_conductance(np.array([hw.device.n_min, hw.device.n_max]))
    return float(1.0 / (hw.array.rows * 0.5 * (g[0] + g[1])))


def _currents(hw: HardwareConfig, grid: TIAGrid) -> np.ndarray:
    i_fs = full_scale_current(hw)
    return linear_values(grid.i_rel_min * i_fs, grid.i_rel_max * i_fs, grid.n_i)


def _settled_fraction(v_out: np.ndarray, sampled: np.ndarray, hw: HardwareConfig) -> float:
    """Least-squares slope of ``sampled`` against ``v_out`` over the linear range."""
    limit = _LINEAR_SHARE * min(abs(hw.tia.v_rail_low_v), abs(hw.tia.v_rail_high_v))
    if limit == 0.0:
        return float("nan")
    keep = np.abs(v_out) <= limit
    if keep.sum() < 2:
        return float("nan")
    x, y = v_out[keep], sampled[keep]
    x0, y0 = x.mean(), y.mean()
    den = float(np.sum((x - x0) ** 2))
    return float(np.sum((x - x0) * (y - y0)) / den) if den > 0 else float("nan")


class TIASurface:
    """The ``tia`` surface (see the module docstring)."""

    name = "tia"
    grid_type = TIAGrid

    def grid(self, preset: str) -> TIAGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: TIAGrid) -> list[dict[str, Any]]:
        read_timing(hw.drive)  # ConfigError now if the edges leave no sampling time
        return [{"kind": "dc"}, {"kind": "pulse"}]

    def _deck(self, hw: HardwareConfig, grid: TIAGrid, point: Mapping[str, Any],
              steps_per_bit: int) -> tuple[str, str]:
        i = _currents(hw, grid)
        r_src = source_resistance(hw)
        if point["kind"] == "dc":
            return render_tia_dc_deck(hw, float(i[0]), float(i[-1]), grid.n_i, r_src,
                                      name="tia_dc"), "tia_dc"
        if point["kind"] == "pulse":
            return render_tia_pulse_deck(hw, i, r_src, read_timing(hw.drive),
                                         steps_per_bit=steps_per_bit,
                                         name="tia_pulse"), "tia_pulse"
        raise ConfigError(f"tia: unknown job kind {point['kind']!r}")

    def solve(self, hw: HardwareConfig, grid: TIAGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        deck, name = self._deck(hw, grid, point, steps_per_bit(runner))
        result = runner.run(deck, name=name)
        if point["kind"] == "dc":
            return {"v_out": result_vector(result, "v(tout)", name, grid.n_i),
                    "v_in": result_vector(result, "v(tin)", name, grid.n_i)}
        timing = read_timing(hw.drive)
        t = result_vector(result, "time", name)
        samples = timing.sample_times_s()[:2]
        tol = 1e-6 * timing.t_bit_s
        for ts in samples:
            if np.min(np.abs(t - ts)) > tol:
                raise SimulatorError(f"the transient has no time point at the sample instant "
                                     f"{ts!r} s", netlist=name)
        if abs(t[-1] - 2 * timing.t_bit_s) > tol:
            raise SimulatorError(f"the transient ended at {t[-1]!r} s instead of "
                                 f"{2 * timing.t_bit_s!r} s", netlist=name)
        sampled = np.stack([np.interp(samples, t,
                                      result_vector(result, f"v(tout{k})", name, t.size))
                            for k in range(grid.n_i)])
        return {"v_out_sampled": sampled}

    def assemble(self, hw: HardwareConfig, grid: TIAGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        by_kind = {p["kind"]: r for p, r in zip(points, results)}
        if set(by_kind) != {"dc", "pulse"} or len(points) != 2:
            raise ConfigError(f"tia: expected one 'dc' and one 'pulse' job, got "
                              f"{[p['kind'] for p in points]}")
        v_out = np.asarray(by_kind["dc"]["v_out"], dtype=float)
        v_in = np.asarray(by_kind["dc"]["v_in"], dtype=float)
        sampled = np.asarray(by_kind["pulse"]["v_out_sampled"], dtype=float)
        t = hw.tia
        timing = read_timing(hw.drive)
        r_src = source_resistance(hw)
        i_fs = full_scale_current(hw)
        axes = {"i_in": Array(_currents(hw, grid), "A",
                              "input current: the column current a perfect virtual ground "
                              "would take, pushed into the TIA input (Norton source in "
                              "parallel with r_source_ohm)")}
        datasets = {
            "v_out": Array(v_out, "V", "settled (DC) TIA output; about -i_in * r_feedback_ohm "
                                       "inside the rails"),
            "v_in": Array(v_in, "V", "TIA input node voltage (virtual-ground error), DC"),
            "v_out_sampled": Array(sampled[:, 0], "V",
                                   "TIA output at the front-end's sample instant of a bit "
                                   "that starts from rest (previous bit without current)"),
            "v_out_sampled_repeat": Array(sampled[:, 1], "V",
                                          "TIA output at the sample instant of a bit that "
                                          "follows a bit of the same current"),
            "settling_error": Array(sampled[:, 0] - v_out, "V",
                                    "v_out_sampled - v_out: what the TIA has not settled at "
                                    "the sample instant (bit from rest)"),
        }
        dims = {name: ("i_in",) for name in datasets}
        attrs = {
            "r_feedback_ohm": t.r_feedback_ohm,
            "open_loop_gain": t.open_loop_gain,
            "gbw_hz": t.gbw_hz,
            "v_rail_low_v": t.v_rail_low_v,
            "v_rail_high_v": t.v_rail_high_v,
            "v_offset_v": t.v_offset_v,
            "v_clamp_knee_v": t.v_clamp_knee_v,
            "r_source_ohm": r_src,
            "r_source_basis": "rows cells in parallel at the middle of the device's "
                              "small-signal conductance window (access transistor and wire "
                              "left out)",
            "r_in_saturated_ohm": 1.0 / (1.0 / r_src + 1.0 / t.r_feedback_ohm),
            "i_full_scale_a": i_fs,
            "closed_loop_tau_s": (1.0 + t.r_feedback_ohm / r_src) / (2 * np.pi * t.gbw_hz),
            "t_bit_s": timing.t_bit_s,
            "t_edge_s": timing.t_edge_s,
            "t_sample_in_bit_s": timing.t_bit_s - 1.5 * timing.t_edge_s,
            "settled_fraction": _settled_fraction(v_out, sampled[:, 0], hw),
            "settled_fraction_repeat": _settled_fraction(v_out, sampled[:, 1], hw),
            "representation": "values on the i_in axis: interpolate linearly; clamp i_in to "
                              "the axis for v_out (flat on the rails)",
            "spice_runs": len(points),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: TIAGrid) -> list[str]:
        """Every job's deck, rendered with the default ``steps_per_bit`` (the solver's step
        settings enter the content hash separately)."""
        steps = SolverConfig().steps_per_bit
        return [self._deck(hw, grid, p, steps)[0] for p in self.points(hw, grid)]


SURFACE = TIASurface()
