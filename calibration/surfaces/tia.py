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

Four SPICE runs:

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
* ``load_dc`` and ``load_pulse``: the same two measurements for ``n_g`` source conductances
  ``g_source`` (``render_tia_load_dc_deck``, and the pulse deck with one source resistance
  per TIA), each at ``n_i_settling`` currents over ``+-i_rel_settling`` full scales (inside
  the linear range). A column's cells load its TIA in parallel, so how far the TIA has
  settled at a sample instant depends on the column: from nearly all (cells on the floor) to
  the least (every cell on the top level); the surrogate follows each column by its own
  conductance (``surrogate.tile``). ``g_source`` runs from half of ``rows`` cells at the
  bottom of the device's window to 1.25 times ``rows`` cells at its top (small-signal
  conductance of the bare device, which bounds the cell's from above).

Axes: ``i_in`` (A), ``n_i`` values evenly over ``[i_rel_min, i_rel_max] * i_full_scale`` with
``i_full_scale = max(|v_rail_low_v|, |v_rail_high_v|) / r_feedback_ohm`` (the current that
would put an ideal TIA's output on its farther rail); the default +-1.5 goes beyond both rails.
Beyond the axis the output stays on its rail (flat to within microvolts past 1.5 full
scales): clamping ``i_in`` to the axis is exact for ``v_out``; ``v_in`` keeps rising there
(the loop has lost its gain), with slope ``r_source || r_feedback`` (attribute
``r_in_saturated_ohm``).

Datasets [i_in]: ``v_out`` (V, settled DC output), ``v_in`` (V, the TIA input node:
the virtual-ground error, ``-v_out / A + v_offset`` while the loop has gain),
``v_out_sampled`` and ``v_out_sampled_repeat`` (V, the output at a bit's sample instant),
``settling_error`` (V, ``v_out_sampled - v_out``). Attributes: the TIA's parameters,
``r_source_ohm``, the timing, and ``settled_fraction`` / ``settled_fraction_repeat``: the
least-squares slope of the sampled against the settled output over the linear range (outputs
within 80% of the nearer rail), the fraction of a step the TIA has settled at the sample.
Datasets [g_source]: ``settled_fraction_load`` and ``settled_fraction_repeat_load`` (the same
slopes for each load), ``closed_loop_tau_load`` (s, the closed loop's time constant
``A / (2 pi GBW) / (1 + A / (1 + R_f g_source))``); [g_source, i_settle]: ``v_out_load``,
``v_out_sampled_load``, ``v_out_sampled_repeat_load`` (V).
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
    render_tia_load_dc_deck,
    render_tia_pulse_deck,
)
from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["TIAGrid", "TIASurface", "SURFACE", "source_resistance", "source_conductances",
           "closed_loop_tau", "full_scale_current"]

#: Allowed input range, in full-scale currents either way.
_I_REL_LIMIT = 20.0
#: Share of the nearer rail within which the output counts as linear (settled_fraction).
_LINEAR_SHARE = 0.8


@dataclass(frozen=True)
class TIAGrid:
    """Sweep grid of ``tia``; validated at construction (ConfigError naming the field).

    ``n_i`` input currents over ``[i_rel_min, i_rel_max]`` full-scale currents; ``n_g``
    source conductances, each at ``n_i_settling`` currents over ``+-i_rel_settling`` full
    scales.
    """

    n_i: int = 81
    i_rel_min: float = -1.5
    i_rel_max: float = 1.5
    n_g: int = 9
    n_i_settling: int = 5
    i_rel_settling: float = 0.6

    def __post_init__(self) -> None:
        check_count("tia.n_i", self.n_i, hi=20_000)
        check_range(("tia.i_rel_min", "tia.i_rel_max"), self.i_rel_min, self.i_rel_max,
                    allowed=(-_I_REL_LIMIT, _I_REL_LIMIT), unit="x full-scale current")
        check_count("tia.n_g", self.n_g, hi=1000)
        check_count("tia.n_i_settling", self.n_i_settling, hi=1000)
        if not 0.0 < self.i_rel_settling < _LINEAR_SHARE:
            raise ConfigError(f"tia.i_rel_settling = {self.i_rel_settling!r} is out of range: "
                              f"allowed (0, {_LINEAR_SHARE}) x full-scale current (the linear "
                              "range)")


_PRESET_GRIDS = {
    "tiny": TIAGrid(n_i=41, n_g=4),     # steps of 7.5% of full scale
    "chip": TIAGrid(n_i=241, n_g=17),   # 1.25%
    "paper-sim": TIAGrid(n_i=481, n_g=17),  # 0.625%
}


def full_scale_current(hw: HardwareConfig) -> float:
    """Current (A) that puts an ideal TIA's output on its farther rail."""
    t = hw.tia
    return max(abs(t.v_rail_low_v), abs(t.v_rail_high_v)) / t.r_feedback_ohm


def source_resistance(hw: HardwareConfig) -> float:
    """A typical column seen from its TIA, ohm (see the module docstring)."""
    g = device_model(hw).small_signal_conductance(np.array([hw.device.n_min, hw.device.n_max]))
    return float(1.0 / (hw.array.rows * 0.5 * (g[0] + g[1])))


def source_conductances(hw: HardwareConfig, grid: TIAGrid) -> np.ndarray:
    """The ``g_source`` axis, S (see the module docstring)."""
    g = device_model(hw).small_signal_conductance(np.array([hw.device.n_min, hw.device.n_max]))
    rows = hw.array.rows
    return linear_values(0.5 * rows * float(g[0]), 1.25 * rows * float(g[1]), grid.n_g)


def closed_loop_tau(hw: HardwareConfig, g_source: np.ndarray) -> np.ndarray:
    """The closed loop's time constant (s) on a source conductance ``g_source`` (S): the
    single-pole op-amp's ``A / (2 pi GBW)`` divided by ``1 + A beta``, ``beta = 1 / (1 + R_f
    g_source)``."""
    t = hw.tia
    a = t.open_loop_gain
    return a / (2 * np.pi * t.gbw_hz) / (1.0 + a / (1.0 + t.r_feedback_ohm * g_source))


def _settling_currents(hw: HardwareConfig, grid: TIAGrid) -> np.ndarray:
    i_fs = full_scale_current(hw)
    return linear_values(-grid.i_rel_settling * i_fs, grid.i_rel_settling * i_fs,
                         grid.n_i_settling)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    x0, y0 = x.mean(), y.mean()
    den = float(np.sum((x - x0) ** 2))
    return float(np.sum((x - x0) * (y - y0)) / den) if den > 0 else float("nan")


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
    return _slope(v_out[keep], sampled[keep])


class TIASurface:
    """The ``tia`` surface (see the module docstring)."""

    name = "tia"
    grid_type = TIAGrid

    def grid(self, preset: str) -> TIAGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: TIAGrid) -> list[dict[str, Any]]:
        read_timing(hw.drive)  # ConfigError now if the edges leave no sampling time
        return [{"kind": "dc"}, {"kind": "pulse"}, {"kind": "load_dc"}, {"kind": "load_pulse"}]

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
        r_load = 1.0 / source_conductances(hw, grid)
        i_set = _settling_currents(hw, grid)
        if point["kind"] == "load_dc":
            return render_tia_load_dc_deck(hw, float(i_set[0]), float(i_set[-1]),
                                           grid.n_i_settling, r_load,
                                           name="tia_load_dc"), "tia_load_dc"
        if point["kind"] == "load_pulse":
            return render_tia_pulse_deck(hw, np.tile(i_set, grid.n_g),
                                         np.repeat(r_load, grid.n_i_settling),
                                         read_timing(hw.drive), steps_per_bit=steps_per_bit,
                                         name="tia_load_pulse"), "tia_load_pulse"
        raise ConfigError(f"tia: unknown job kind {point['kind']!r}")

    def solve(self, hw: HardwareConfig, grid: TIAGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        deck, name = self._deck(hw, grid, point, steps_per_bit(runner))
        result = runner.run(deck, name=name)
        if point["kind"] == "dc":
            return {"v_out": result_vector(result, "v(tout)", name, grid.n_i),
                    "v_in": result_vector(result, "v(tin)", name, grid.n_i)}
        if point["kind"] == "load_dc":
            return {"v_out_load": np.stack([
                result_vector(result, f"v(tout{k})", name, grid.n_i_settling)
                for k in range(grid.n_g)])}
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
        tias = grid.n_i if point["kind"] == "pulse" else grid.n_g * grid.n_i_settling
        sampled = np.stack([np.interp(samples, t,
                                      result_vector(result, f"v(tout{k})", name, t.size))
                            for k in range(tias)])
        if point["kind"] == "pulse":
            return {"v_out_sampled": sampled}
        return {"v_out_sampled_load": sampled.reshape(grid.n_g, grid.n_i_settling, 2)}

    def assemble(self, hw: HardwareConfig, grid: TIAGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        by_kind = {p["kind"]: r for p, r in zip(points, results)}
        kinds = {"dc", "pulse", "load_dc", "load_pulse"}
        if set(by_kind) != kinds or len(points) != len(kinds):
            raise ConfigError(f"tia: expected one job of each kind {sorted(kinds)}, got "
                              f"{[p['kind'] for p in points]}")
        v_out = np.asarray(by_kind["dc"]["v_out"], dtype=float)
        v_in = np.asarray(by_kind["dc"]["v_in"], dtype=float)
        sampled = np.asarray(by_kind["pulse"]["v_out_sampled"], dtype=float)
        v_load = np.asarray(by_kind["load_dc"]["v_out_load"], dtype=float)
        s_load = np.asarray(by_kind["load_pulse"]["v_out_sampled_load"], dtype=float)
        g_load = source_conductances(hw, grid)
        fractions = np.array([[_slope(v_load[k], s_load[k, :, b]) for b in range(2)]
                              for k in range(grid.n_g)])
        t = hw.tia
        timing = read_timing(hw.drive)
        r_src = source_resistance(hw)
        i_fs = full_scale_current(hw)
        axes = {"i_in": Array(_currents(hw, grid), "A",
                              "input current: the column current a perfect virtual ground "
                              "would take, pushed into the TIA input (Norton source in "
                              "parallel with r_source_ohm)"),
                "g_source": Array(g_load, "S", "source conductance of the load runs: the "
                                  "column's cells seen from its TIA"),
                "i_settle": Array(_settling_currents(hw, grid), "A",
                                  "input currents of the load runs (linear range)")}
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
        dims: dict[str, tuple[str, ...]] = {name: ("i_in",) for name in datasets}
        datasets.update({
            "settled_fraction_load": Array(fractions[:, 0], "1",
                                           "settled_fraction on each source conductance"),
            "settled_fraction_repeat_load": Array(
                fractions[:, 1], "1", "settled_fraction_repeat on each source conductance"),
            "closed_loop_tau_load": Array(closed_loop_tau(hw, g_load), "s",
                                          "closed-loop time constant on each source "
                                          "conductance (single-pole op-amp)"),
            "v_out_load": Array(v_load, "V", "settled (DC) output on each load"),
            "v_out_sampled_load": Array(s_load[..., 0], "V",
                                        "output at the sample instant of a bit from rest, "
                                        "on each load"),
            "v_out_sampled_repeat_load": Array(s_load[..., 1], "V",
                                               "output at the sample instant of a repeated "
                                               "bit, on each load"),
        })
        for name in ("settled_fraction_load", "settled_fraction_repeat_load",
                     "closed_loop_tau_load"):
            dims[name] = ("g_source",)
        for name in ("v_out_load", "v_out_sampled_load", "v_out_sampled_repeat_load"):
            dims[name] = ("g_source", "i_settle")
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
