"""The ``energy`` surface: energy per VMM and per programming pulse, where SPICE gives it.

What is integrated
------------------
The energy an independent source delivers, ``E = -integral v(node) i(source) dt``
(trapezoidal over ngspice's own time points; ``i`` flows into the source's ``+`` node).

* **VMM**: one bit-serial 8-bit read of a whole tile (``netlists.array.render_tile_deck``:
  cells, wires, row drivers, TIAs, front-ends), over the whole transient. Sources: the row
  drivers (``v_read`` through ``r_driver``: what the cells, wires and driver resistance
  dissipate, the dominant term), the word line (from the end of the first bit on: before
  that it charges every gate from 0 V, an artifact of a transient started from all-zero
  nodes, while a chip holds the word line at the read gate voltage between reads; what is
  left is displacement current that nets to ~0 over a read) and the front-end clocks (they
  drive behavioural switches and deliver nothing). ``vmm_energy_j`` is their sum.
  The TIAs' supplies (``Vtia_dd``, ``Vtia_ss``: quiescent bias and output stage, see
  ``netlists.periphery.tia_subckt``) over the whole transient are ``vmm_tia_supply_energy_j``;
  ``vmm_tia_output_energy_j``, the power their outputs sink,
  ``integral sum_j |v(tout_j) I_j| dt``, is the load's part of it. The row drivers' energy
  splits into their own resistance's loss (``vmm_driver_loss_energy_j``) and the crossbar's,
  cells and wires (``vmm_crossbar_energy_j``). Not in SPICE, so not included here: the ADC
  conversion, the input DACs and row-driver supply overhead, the sample-and-hold buffers,
  clock generation and the digital periphery (``calibration.energy_model`` adds them, each
  from a documented model).
  Per MAC: ``vmm_energy_j / (rows * cols)``; ``vmm_tops_per_w = 2 rows cols / vmm_energy_j /
  1e12`` (one MAC = 2 operations, the paper's convention: 2.66 nJ per 64x64 VMM is
  3.08 TOPS/W, with ADCs and periphery).
* **Programming pulse**: one SET (bit line at +V, gate at ``v_gate_set_v``) or RESET
  (source line at +V, gate at ``v_gate_reset_v``) pulse of ``t_write_s`` on one nominal cell
  (``netlists.programming.render_pulse_deck``), from several initial states; the bit-line,
  word-line and source-line drivers' energy over the pulse (the window between the read
  before and the read after it). The driver circuits' own losses are not included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid, result_vector
from circuitsim.tile import level_table
from netlists.config import HardwareConfig
from netlists.energy_decks import (
    PULSE_SOURCES,
    driver_nodes,
    render_pulse_energy_deck,
    render_vmm_energy_deck,
    vmm_sources,
)
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["EnergyGrid", "EnergySurface", "SURFACE", "source_energy_j"]

TILE_KINDS = ("random", "top", "floor")
POLARITIES = ("set", "reset")
PAPER_NJ_PER_VMM = 2.66        # Wu et al. 2023, per 64x64 tile VMM, ADC and periphery included
PAPER_TOPS_PER_W = 3.08


def _tuple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ConfigError(f"energy grid: {name} = {value!r} must be a list")
    if not value:
        raise ConfigError(f"energy grid: {name} is empty: give at least one value")
    if len(value) > 100:
        raise ConfigError(f"energy grid: {name} has {len(value)} values: at most 100")
    out = []
    for v in value:
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ConfigError(f"energy grid: {name} holds {v!r}: values must be finite "
                                  "numbers")
            out.append(float(v))
        else:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class EnergyGrid:
    """What the ``energy`` surface solves.

    ``vmm_tiles``: one VMM case per entry, the kind of conductance map (``random`` levels,
    every cell on the ``top`` level or on the ``floor``; the levels are ``hw.levels``), each
    with random 8-bit inputs; ``pulse_amplitudes_v`` (increasing, V) for both SET and
    RESET; ``pulse_initial_fractions``: initial states as fractions of ``[n_min, n_max]``
    (increasing, in [0, 1]); ``seed`` the random draws.
    """

    vmm_tiles: tuple[str, ...] = ("random", "random", "top")
    pulse_amplitudes_v: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)
    pulse_initial_fractions: tuple[float, ...] = (0.0, 0.5, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        tiles = _tuple("vmm_tiles", self.vmm_tiles, str)
        for t in tiles:
            if t not in TILE_KINDS:
                raise ConfigError(f"energy grid: vmm_tiles holds {t!r}: allowed "
                                  f"{list(TILE_KINDS)}")
        amps = _tuple("pulse_amplitudes_v", self.pulse_amplitudes_v, float)
        if any(a <= 0 or a > 20 for a in amps) or any(b <= a for a, b in zip(amps, amps[1:])):
            raise ConfigError(f"energy grid: pulse_amplitudes_v = {list(amps)!r} must be "
                              "increasing, each in (0, 20] V")
        fracs = _tuple("pulse_initial_fractions", self.pulse_initial_fractions, float)
        if any(f < 0 or f > 1 for f in fracs) or any(b <= a for a, b in zip(fracs, fracs[1:])):
            raise ConfigError(f"energy grid: pulse_initial_fractions = {list(fracs)!r} must "
                              "be increasing, each in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed <= 2 ** 32 - 1:
            raise ConfigError(f"energy grid: seed = {self.seed!r} is out of range: allowed "
                              f"a whole number in [0, {2 ** 32 - 1}]")
        # Lists (a grid read back from JSON) become tuples: the grid stays hashable.
        object.__setattr__(self, "vmm_tiles", tiles)
        object.__setattr__(self, "pulse_amplitudes_v", amps)
        object.__setattr__(self, "pulse_initial_fractions", fracs)


_PRESET_GRIDS = {
    "tiny": EnergyGrid(vmm_tiles=("random", "random", "random", "top", "floor")),
    # A 64x64 bit-serial transient is the slowest solve here (benchmarks/bench_spice.py,
    # `tran`): three cases.
    "chip": EnergyGrid(vmm_tiles=("random", "random", "top")),
    "paper-sim": EnergyGrid(vmm_tiles=("random",)),
}


def source_energy_j(t: np.ndarray, v: np.ndarray, i: np.ndarray, t_start: float | None = None,
                    t_stop: float | None = None) -> float:
    """``-integral v i dt`` (trapezoidal on the given time points), J, optionally only over
    ``[t_start, t_stop]`` (the integrand is interpolated linearly at the window's ends)."""
    t = np.asarray(t, float)
    p = -np.asarray(v, float) * np.asarray(i, float)
    if t_start is not None or t_stop is not None:
        lo = t[0] if t_start is None else float(t_start)
        hi = t[-1] if t_stop is None else float(t_stop)
        inside = (t > lo) & (t < hi)
        tt = np.concatenate([[lo], t[inside], [hi]])
        p = np.interp(tt, t, p)
        t = tt
    return float(np.sum(0.5 * (p[1:] + p[:-1]) * np.diff(t)))


class EnergySurface:
    name = "energy"
    grid_type = EnergyGrid

    def grid(self, preset: str) -> EnergyGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: EnergyGrid) -> list[dict[str, Any]]:
        vmax = hw.device.v_valid_max_v
        if grid.pulse_amplitudes_v[-1] > vmax:
            raise ConfigError(f"energy grid: pulse_amplitudes_v up to "
                              f"{grid.pulse_amplitudes_v[-1]!r} V exceed the device model's "
                              f"validity, device.v_valid_max_v = {vmax!r} V")
        pts: list[dict[str, Any]] = [
            {"kind": "vmm", "case": c, "tile": tile, "seed": grid.seed,
             "levels": hw.levels.count}
            for c, tile in enumerate(grid.vmm_tiles)]
        pts += [{"kind": "pulse", "polarity": pol, "amplitude_v": amp,
                 "initial_fractions": list(grid.pulse_initial_fractions)}
                for pol in POLARITIES for amp in grid.pulse_amplitudes_v]
        return pts

    # -- jobs ------------------------------------------------------------------------------

    def solve(self, hw: HardwareConfig, grid: EnergyGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        if point.get("kind") == "vmm":
            return self._solve_vmm(hw, point, runner)
        if point.get("kind") == "pulse":
            return self._solve_pulse(hw, point, runner)
        raise ConfigError(f"energy point: kind {point.get('kind')!r} must be 'vmm' or 'pulse'")

    def _solve_vmm(self, hw: HardwareConfig, point: Mapping[str, Any], runner: SpiceRunner
                   ) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows, cols = hw.array.rows, hw.array.cols
        tile = point["tile"]
        if tile not in TILE_KINDS:
            raise ConfigError(f"energy point: tile {tile!r} must be one of {list(TILE_KINDS)}")
        rng = np.random.default_rng([int(point["seed"]), int(point["case"])])
        level_n, level_g = level_table(hw, runner)
        if tile == "random":
            pick = rng.integers(0, len(level_n), size=(rows, cols))
        else:
            pick = np.full((rows, cols), len(level_n) - 1 if tile == "top" else 0)
        x = rng.integers(0, 2 ** hw.drive.input_bits, size=rows)
        states, g = level_n[pick], level_g[pick]
        name = f"vmm_energy{int(point['case'])}"
        res = runner.run(render_vmm_energy_deck(hw, states, x, name=name), name=name)
        t = result_vector(res, "time", name)
        groups = {}
        for group, sources in vmm_sources(hw).items():
            # The word line from the end of the first bit: before, it charges every gate
            # from 0 V, an artifact of a transient that starts from all-zero nodes (uic).
            t0 = hw.drive.t_bit_s if group == "wordline" else None
            groups[group] = sum(source_energy_j(t, result_vector(res, f"v({node})", name),
                                                result_vector(res, f"i({src})", name), t0, None)
                                for src, node in sources)
        # What the row drivers' own resistance dissipates; the rest of the row drivers'
        # energy is the crossbar's (row and column wires, cells; the TIA inputs sit at a
        # virtual ground and take ~nothing).
        loss = 0.0
        for outer, inner in driver_nodes(hw) or []:
            drop = result_vector(res, f"v({outer})", name) - \
                result_vector(res, f"v({inner})", name)
            p_r = drop * drop / hw.array.r_driver_ohm
            loss += float(np.sum(0.5 * (p_r[1:] + p_r[:-1]) * np.diff(t)))
        tout = np.stack([result_vector(res, f"v(tout{j})", name) for j in range(cols)])
        tin = np.stack([result_vector(res, f"v(tin{j})", name) for j in range(cols)])
        col_i = (tin - tout) / hw.tia.r_feedback_ohm
        p_tia = np.sum(np.abs(tout * col_i), axis=0)
        tia = float(np.sum(0.5 * (p_tia[1:] + p_tia[:-1]) * np.diff(t)))

        def charge(i: np.ndarray) -> float:
            total = np.sum(i, axis=0)
            return float(np.sum(0.5 * (total[1:] + total[:-1]) * np.diff(t)))

        # col_i flows through R_f into the TIA output: > 0 is sunk (into V_ss), < 0 sourced.
        sunk, sourced = charge(np.maximum(col_i, 0.0)), charge(np.maximum(-col_i, 0.0))
        return {
            "states": states,
            "conductance_s": g,
            "inputs": x,
            "row_driver_energy_j": np.array(groups["row"]),
            "wordline_energy_j": np.array(groups["wordline"]),
            "clock_energy_j": np.array(groups["clock"]),
            "tia_supply_energy_j": np.array(groups["tia_supply"]),
            "driver_loss_energy_j": np.array(loss),
            "tia_output_energy_j": np.array(tia),
            "tia_sunk_charge_c": np.array(sunk),
            "tia_sourced_charge_c": np.array(sourced),
            "duration_s": np.array(t[-1] - t[0]),
            "solve_seconds": np.array(time.perf_counter() - start),
        }

    def _solve_pulse(self, hw: HardwareConfig, point: Mapping[str, Any], runner: SpiceRunner
                     ) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        pol, amp = point["polarity"], float(point["amplitude_v"])
        fracs = np.asarray(point["initial_fractions"], float)
        d = hw.device
        n0 = d.n_min + fracs * (d.n_max - d.n_min)
        energy = np.zeros((len(n0), len(PULSE_SOURCES)))
        g_before = np.zeros(len(n0))
        g_after = np.zeros(len(n0))
        n_after = np.zeros(len(n0))
        for k, n in enumerate(n0):
            name = f"pulse_energy_{pol}"
            deck = render_pulse_energy_deck(hw, pol, amp, float(n), name=name)
            res = runner.run(deck.text, name=name)
            t = result_vector(res, "time", name)
            for s, (src, node) in enumerate(PULSE_SOURCES):
                v = result_vector(res, f"v({node})", name)
                # The window must hold the pulse alone: every driver idle at its ends.
                edges = np.interp([deck.t_start_s, deck.t_stop_s], t, v)
                if np.any(np.abs(edges) > 1e-9):
                    raise SimulatorError(f"source {src} is not idle at the pulse window's "
                                         f"ends ({edges!r} V)", netlist=name)
                energy[k, s] = source_energy_j(t, v, result_vector(res, f"i({src})", name),
                                               deck.t_start_s, deck.t_stop_s)
            i_read = -np.interp(deck.read_times_s, t, result_vector(res, "i(vbl)", name))
            g_before[k], g_after[k] = i_read[:2] / hw.drive.v_read_v
            n_after[k] = np.interp(deck.read_times_s[1], t, result_vector(res, "v(xd.x)", name))
        return {
            "initial_states": n0,
            "source_energy_j": energy,
            "conductance_before_s": g_before,
            "conductance_after_s": g_after,
            "state_after": n_after,
            "solve_seconds": np.array(time.perf_counter() - start),
        }

    # -- the table -------------------------------------------------------------------------

    def assemble(self, hw: HardwareConfig, grid: EnergyGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        if len(points) != len(results):
            raise ConfigError(f"energy surface: {len(points)} points but {len(results)} results")
        rows, cols = hw.array.rows, hw.array.cols
        vmm = [(p, r) for p, r in zip(points, results) if p["kind"] == "vmm"]
        pulses = {(p["polarity"], float(p["amplitude_v"])): r
                  for p, r in zip(points, results) if p["kind"] == "pulse"}
        if not vmm or len(pulses) != len(POLARITIES) * len(grid.pulse_amplitudes_v):
            raise ConfigError("energy surface: results do not cover the grid")

        def col(key: str) -> np.ndarray:
            return np.array([np.asarray(r[key], float) for _, r in vmm])

        row_e, wl_e, clk_e = col("row_driver_energy_j"), col("wordline_energy_j"), \
            col("clock_energy_j")
        tia_e, loss_e = col("tia_supply_energy_j"), col("driver_loss_energy_j")
        total = row_e + wl_e + clk_e + tia_e
        macs = rows * cols
        per_mac = total / macs
        tops_w = 2.0 * macs / total / 1e12
        amps = np.array(grid.pulse_amplitudes_v)
        fracs = np.array(grid.pulse_initial_fractions)
        d = hw.device
        n0 = d.n_min + fracs * (d.n_max - d.n_min)

        def pulse_stack(key: str) -> np.ndarray:
            return np.stack([np.stack([np.asarray(pulses[(pol, float(a))][key], float)
                                       for a in amps]) for pol in POLARITIES])

        src_e = pulse_stack("source_energy_j")             # (polarity, amplitude, state, src)
        pulse_e = src_e.sum(-1)
        random_cases = np.array([p["tile"] == "random" for p, _ in vmm])
        typical = total[random_cases] if random_cases.any() else total
        idx = lambda n: np.arange(n, dtype=np.int64)  # noqa: E731
        axes = {
            "vmm_case": Array(idx(len(vmm)), "1", "one bit-serial VMM of one tile"),
            "row": Array(idx(rows), "1", "row index"),
            "col": Array(idx(cols), "1", "column index"),
            "polarity": Array(idx(2), "1", "0: SET (bit line at +V), 1: RESET (source line "
                              "at +V)"),
            "amplitude": Array(amps, "V", "write pulse amplitude"),
            "initial_state": Array(n0, "1e26 m^-3", "cell state before the pulse"),
            "pulse_source": Array(idx(len(PULSE_SOURCES)), "1",
                                  "0: bit-line driver, 1: word-line driver, 2: source-line "
                                  "driver"),
        }
        d_ = {
            "vmm_energy_j": (total, "J", "energy delivered by every independent source of the "
                             "tile read (row drivers + word line + clocks + TIA supplies) over "
                             "one bit-serial VMM; no ADC conversion, DAC or digital periphery "
                             "(calibration.energy_model adds them)", ("vmm_case",)),
            "vmm_tia_supply_energy_j": (tia_e, "J", "the TIAs' supplies (quiescent bias and "
                                        "output stage) over the read", ("vmm_case",)),
            "vmm_driver_loss_energy_j": (loss_e, "J", "dissipated in the row drivers' output "
                                         "resistance (part of vmm_row_driver_energy_j)",
                                         ("vmm_case",)),
            "vmm_crossbar_energy_j": (row_e - loss_e, "J", "cells and wires: the row drivers' "
                                      "energy less their own resistance's loss",
                                      ("vmm_case",)),
            "vmm_energy_per_mac_j": (per_mac, "J", "vmm_energy_j / (rows * cols)",
                                     ("vmm_case",)),
            "vmm_tops_per_w": (tops_w, "TOPS/W", "2 rows cols / vmm_energy_j / 1e12 (array "
                               "only)", ("vmm_case",)),
            "vmm_row_driver_energy_j": (row_e, "J", "row drivers: cells, wires and driver "
                                        "resistance", ("vmm_case",)),
            "vmm_wordline_energy_j": (wl_e, "J", "word-line source from the end of the "
                                      "first bit (the gates' initial charging excluded)",
                                      ("vmm_case",)),
            "vmm_clock_energy_j": (clk_e, "J", "front-end clock sources (behavioural switches: "
                                   "~0)", ("vmm_case",)),
            "vmm_tia_charge_c": (col("tia_sunk_charge_c") + col("tia_sourced_charge_c"), "C",
                                 "integral sum_j |I_j| dt: the charge the TIA outputs carry",
                                 ("vmm_case",)),
            "vmm_tia_output_energy_j": (col("tia_output_energy_j"), "J",
                                        "integral of sum_j |v(tout_j) I_j| dt: power the TIA "
                                        "outputs sink; part of vmm_tia_supply_energy_j",
                                        ("vmm_case",)),
            "vmm_duration_s": (col("duration_s"), "s", "length of the bit-serial transient",
                               ("vmm_case",)),
            "vmm_tile_kind": (np.array([TILE_KINDS.index(p["tile"]) for p, _ in vmm],
                                       dtype=np.int8), "1",
                              "index into " + ", ".join(TILE_KINDS), ("vmm_case",)),
            "vmm_mean_conductance_s": (col("conductance_s").mean(axis=(1, 2)), "S",
                                       "mean cell read conductance of the map", ("vmm_case",)),
            "vmm_mean_input": (col("inputs").mean(axis=1), "1", "mean 8-bit input code",
                               ("vmm_case",)),
            "vmm_states": (col("states"), "1e26 m^-3", "cell states of each case",
                           ("vmm_case", "row", "col")),
            "vmm_inputs": (col("inputs").astype(np.int64), "1", "input codes, applied LSB "
                           "first", ("vmm_case", "row")),
            "pulse_energy_j": (pulse_e.mean(axis=-1), "J", "energy of one write pulse "
                               "(bit, word and source lines), mean over the initial states",
                               ("polarity", "amplitude")),
            "pulse_energy_by_state_j": (pulse_e, "J", "energy of one write pulse from each "
                                        "initial state", ("polarity", "amplitude",
                                                          "initial_state")),
            "pulse_source_energy_j": (src_e, "J", "pulse energy per driver",
                                      ("polarity", "amplitude", "initial_state",
                                       "pulse_source")),
            "pulse_conductance_before_s": (pulse_stack("conductance_before_s"), "S",
                                           "cell read conductance before the pulse",
                                           ("polarity", "amplitude", "initial_state")),
            "pulse_conductance_after_s": (pulse_stack("conductance_after_s"), "S",
                                          "cell read conductance after the pulse",
                                          ("polarity", "amplitude", "initial_state")),
        }
        datasets = {k: Array(np.asarray(v[0]), v[1], v[2]) for k, v in d_.items()}
        dims = {k: v[3] for k, v in d_.items()}
        attrs = {
            "included": "VMM: every independent source of the tile read deck (row drivers "
                        "at v_read through r_driver, word line, clocks, TIA supplies); pulse: "
                        "bit-, word- and source-line drivers over the pulse",
            "excluded": "ADC conversion, input DACs, driver supply overhead, sample-and-hold "
                        "buffers, clock generation, digital periphery (modelled outside "
                        "SPICE: calibration.energy_model)",
            "polarity_names": list(POLARITIES),
            "tile_kind_names": list(TILE_KINDS),
            "pulse_source_names": [s for s, _ in PULSE_SOURCES],
            "pulse_width_s": hw.drive.t_write_s,
            "macs_per_vmm": macs,
            "random_mean_vmm_energy_j": float(np.mean(typical)),
            "random_mean_energy_per_mac_j": float(np.mean(typical) / macs),
            "random_mean_tops_per_w": float(2.0 * macs / np.mean(typical) / 1e12),
            "paper_nj_per_64x64_vmm": PAPER_NJ_PER_VMM,
            "paper_tops_per_w": PAPER_TOPS_PER_W,
            # per VMM: level table (2) + the transient; per pulse point: one per state
            "spice_runs": 3 * len(vmm) + len(pulses) * len(n0),
            "solve_seconds": float(sum(float(np.asarray(r.get("solve_seconds", 0.0)))
                                       for r in results)),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: EnergyGrid) -> list[str]:
        d = hw.device
        states = np.full((hw.array.rows, hw.array.cols), 0.5 * (d.n_min + d.n_max))
        x = np.full(hw.array.rows, 2 ** hw.drive.input_bits - 1)
        mid = 0.5 * (d.n_min + d.n_max)
        amp = grid.pulse_amplitudes_v[0]
        return [render_vmm_energy_deck(hw, states, x),
                render_pulse_energy_deck(hw, "set", amp, mid).text,
                render_pulse_energy_deck(hw, "reset", amp, mid).text]


SURFACE = EnergySurface()
