"""Surface ``programming``: the change of state (and of read conductance) that ONE write pulse
makes, through the access transistor, versus the cell's state, the pulse's polarity,
amplitude, width and gate voltage, with its cycle-to-cycle spread.

How it is solved
----------------
One job per (polarity, amplitude, width, gate voltage): one ngspice transient
(:func:`circuitsim.write_verify.run_batch`, deck :mod:`netlists.programming_batch`) holding
``len(state) x replicas`` independent 1T1R cells. Cell (s, r) starts at state ``state[s]``
and has its own cycle-to-cycle rate multiplier ``kc[s, r] = exp(c2c_sigma z)``, ``z`` a
standard normal drawn from ``numpy.random.default_rng(seed)`` (one ``(state, replica)``
array per job); the device-to-device multipliers are nominal (``kd = wd = 1``). The cells
share ideal drive sources. Each cell is read (``drive.v_read_v``, read gate
``array.v_gate_read_v``), given one pulse, and read again, exactly as the single-cell deck
of :mod:`netlists.programming` does (``tests/test_surface_programming.py`` checks that a cell
of the batch reproduces it). ``dstate`` is the state node after minus before; ``dg`` the
read conductance (read current / ``v_read_v``) after minus before.

Polarity +1 is a SET (bit line at +amplitude, word line at ``v_gate``, source line at 0),
-1 a RESET (source line at +amplitude, bit line at 0, word line at ``v_gate``).

Design choices (documented in the table's attributes too)
--------------------------------------------------------
* Gate axis: ONE absolute ``v_gate`` axis shared by both polarities, so every dataset has
  the same five dimensions. The presets put both nominal gate voltages on it
  (``drive.v_gate_set_v`` for SET, where the gate sets the current compliance, and
  ``drive.v_gate_reset_v`` for RESET), so the nominal operating points are grid points,
  not interpolated; the other combinations (a RESET at the SET gate voltage...) come along.
* Common random numbers: every job uses the same seed, so the same ``kc`` draws, at every
  (polarity, amplitude, width, gate). The Monte Carlo noise of the mean is then the same
  at neighbouring grid points: the surface stays smooth (and monotonic where the physics
  is) for interpolation, while each point's spread is still a sample of ``replicas``.
* Device-to-device variation is not in this surface: ``kd`` multiplies the rate (to first
  order, the state change), ``wd`` scales the window bounds; a consumer applies them.
* The state axis is given as fractions of ``[device.n_min, device.n_max]`` in the grid and
  stored in absolute units (1e26 m^-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from calibration.base import Array, JobResult, Point, SurfaceData, preset_grid
from circuitsim.write_verify import run_batch
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError
from netlists.programming_batch import BatchCell, render_batch_deck

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["ProgrammingGrid", "ProgrammingSurface", "SURFACE"]

_NAME = "programming"
#: Largest gate voltage a sweep may use, V (the range of drive.v_gate_*_v).
_GATE_MAX_V = 5.0


def _axis(field_name: str, values: Any, lo: float, hi: float, *, lo_open: bool = False,
          min_points: int = 2) -> tuple[float, ...]:
    """``values`` as a tuple of finite, strictly increasing floats in ``[lo, hi]``."""
    label = f"{_NAME}.{field_name}"
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} = {values!r} must be a sequence of numbers") from None
    if any(isinstance(v, bool) for v in values):
        raise ConfigError(f"{label} = {values!r} must be a sequence of numbers")
    if len(out) < min_points:
        raise ConfigError(f"{label} = {values!r} has {len(out)} point(s): a sweep axis needs "
                          f"at least {min_points}")
    left = "(" if lo_open else "["
    for v in out:
        bad = not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi
        if bad:
            raise ConfigError(f"{label} holds {v!r}, out of range: allowed {left}{lo:g}, {hi:g}]")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ConfigError(f"{label} = {values!r} must be strictly increasing")
    return out


def _whole(field_name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{_NAME}.{field_name} = {value!r} must be a whole number >= {lo}")
    return int(value)


@dataclass(frozen=True)
class ProgrammingGrid:
    """Sweep grid of the ``programming`` surface (defaults: the ``chip`` preset).

    ``polarities``: +1 (SET) and/or -1 (RESET). ``amplitudes_v``: pulse amplitude, V (at
    most ``device.v_valid_max_v``, checked against the hardware). ``widths_s``: pulse width,
    s (more than two ``drive.t_edge_s``). ``gates_v``: word-line voltage during the pulse,
    V, in [0, 5]. ``state_fractions``: initial states as fractions of
    ``[device.n_min, device.n_max]``. ``replicas``: Monte Carlo cells per state (>= 2, for a
    spread). ``seed``: of the cycle-to-cycle draws (common to all jobs).
    """

    polarities: tuple[int, ...] = (-1, 1)
    amplitudes_v: tuple[float, ...] = tuple(round(1.5 + 0.1 * k, 10) for k in range(16))
    widths_s: tuple[float, ...] = (50e-9, 100e-9, 200e-9)
    gates_v: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)
    state_fractions: tuple[float, ...] = tuple(k / 12 for k in range(13))
    replicas: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        pol = self.polarities
        try:
            pol_t = tuple(pol)
        except TypeError:
            raise ConfigError(f"{_NAME}.polarities = {pol!r} must be a sequence") from None
        if not pol_t or any(isinstance(p, bool) or p not in (-1, 1) for p in pol_t) \
                or list(pol_t) != sorted(set(pol_t)):
            raise ConfigError(f"{_NAME}.polarities = {pol!r} must be (-1,), (1,) or (-1, 1): "
                              "-1 RESET, +1 SET, increasing")
        object.__setattr__(self, "polarities", tuple(int(p) for p in pol_t))
        object.__setattr__(self, "amplitudes_v",
                           _axis("amplitudes_v", self.amplitudes_v, 0.0, 20.0, lo_open=True))
        object.__setattr__(self, "widths_s",
                           _axis("widths_s", self.widths_s, 0.0, 1e-3, lo_open=True))
        object.__setattr__(self, "gates_v", _axis("gates_v", self.gates_v, 0.0, _GATE_MAX_V))
        object.__setattr__(self, "state_fractions",
                           _axis("state_fractions", self.state_fractions, 0.0, 1.0))
        _whole("replicas", self.replicas, 2)
        _whole("seed", self.seed, 0)

    def check(self, hw: HardwareConfig) -> None:
        """The checks that need the hardware: amplitudes within the model's validity,
        widths longer than two pulse edges."""
        vmax = hw.device.v_valid_max_v
        if self.amplitudes_v[-1] > vmax:
            raise ConfigError(
                f"{_NAME}.amplitudes_v holds {self.amplitudes_v[-1]!r} V, beyond the device "
                f"model's validity: allowed (0, {vmax:g}] V (device.v_valid_max_v)")
        edge2 = 2 * hw.drive.t_edge_s
        if self.widths_s[0] <= edge2:
            raise ConfigError(
                f"{_NAME}.widths_s holds {self.widths_s[0]!r} s: a pulse must be longer than "
                f"two edges, allowed ({edge2:g}, 0.001] s (2 x drive.t_edge_s)")


_PRESETS = {
    "tiny": dict(polarities=(-1, 1), amplitudes_v=(1.5, 2.25, 3.0), widths_s=(50e-9, 100e-9),
                 gates_v=(2.0, 3.0), state_fractions=(0.0, 0.25, 0.5, 0.75, 1.0), replicas=4,
                 seed=0),
    "chip": {},
    "paper-sim": {},  # the device and its drive are those of the chip
}


def _states(hw: HardwareConfig, grid: ProgrammingGrid) -> np.ndarray:
    d = hw.device
    return d.n_min + np.asarray(grid.state_fractions) * (d.n_max - d.n_min)


def _cells(hw: HardwareConfig, grid: ProgrammingGrid, point: Point) -> list[BatchCell]:
    states = _states(hw, grid)
    rng = np.random.default_rng(int(point["seed"]))
    kc = np.exp(hw.device.c2c_sigma * rng.standard_normal((states.size, grid.replicas)))
    kind = "set" if int(point["polarity"]) > 0 else "reset"
    return [BatchCell(n0=float(n), kind=kind, amplitude_v=float(point["amplitude_v"]),
                      v_gate_v=float(point["v_gate_v"]), kc=float(kc[s, r]))
            for s, n in enumerate(states) for r in range(grid.replicas)]


class ProgrammingSurface:
    name = _NAME
    grid_type = ProgrammingGrid

    def grid(self, preset: str) -> ProgrammingGrid:
        return preset_grid(self.name, _PRESETS, preset, ProgrammingGrid)

    def points(self, hw: HardwareConfig, grid: ProgrammingGrid) -> list[Point]:
        grid.check(hw)
        return [{"index": [ip, ia, iw, ig], "polarity": p, "amplitude_v": a, "width_s": w,
                 "v_gate_v": g, "seed": grid.seed}
                for ip, p in enumerate(grid.polarities)
                for ia, a in enumerate(grid.amplitudes_v)
                for iw, w in enumerate(grid.widths_s)
                for ig, g in enumerate(grid.gates_v)]

    def solve(self, hw: HardwareConfig, grid: ProgrammingGrid, point: Point,
              runner: SpiceRunner) -> JobResult:
        grid.check(hw)
        solver = getattr(runner, "solver", None)
        res = run_batch(hw, _cells(hw, grid, point), width_s=float(point["width_s"]),
                        runner=runner, read_before=True,
                        solver=solver if isinstance(solver, SolverConfig) else None,
                        name="programming")
        shape = (len(grid.state_fractions), grid.replicas)
        return {"state_before": res.state_before.reshape(shape),
                "state_after": res.state_after.reshape(shape),
                "g_before": res.g_before.reshape(shape),
                "g_after": res.g_after.reshape(shape),
                "spice_runs": np.array(res.runs)}

    def assemble(self, hw: HardwareConfig, grid: ProgrammingGrid, points: Sequence[Point],
                 results: Sequence[JobResult]) -> SurfaceData:
        sizes = (len(grid.polarities), len(grid.amplitudes_v), len(grid.widths_s),
                 len(grid.gates_v))
        n_s, n_r = len(grid.state_fractions), grid.replicas
        if len(points) != len(results) or len(points) != math.prod(sizes):
            raise SimulatorError(f"{len(results)} job results for {len(points)} points; the "
                                 f"grid has {math.prod(sizes)}", netlist=_NAME)
        full = sizes + (n_s, n_r)
        data = {key: np.full(full, np.nan) for key in
                ("state_before", "state_after", "g_before", "g_after")}
        for point, result in zip(points, results):
            idx = tuple(int(i) for i in point["index"])
            for key in data:
                value = np.asarray(result[key], dtype=float)
                if value.shape != (n_s, n_r):
                    raise SimulatorError(f"job {idx}: {key} has shape {value.shape}, expected "
                                         f"{(n_s, n_r)}", netlist=_NAME)
                data[key][idx] = value
        if not all(np.all(np.isfinite(v)) for v in data.values()):
            raise SimulatorError("some grid points have no result", netlist=_NAME)
        dstate = data["state_after"] - data["state_before"]
        dg = data["g_after"] - data["g_before"]
        ddof = 1
        dims5 = ("polarity", "amplitude", "width", "v_gate", "state")
        dims6 = dims5 + ("replica",)
        mc = (f"over {n_r} Monte Carlo replicas (cycle-to-cycle kc, log-normal sigma "
              f"{hw.device.c2c_sigma:g}; sample std, ddof=1)")
        axes = {
            "polarity": Array(np.array(grid.polarities, dtype=np.int64), "1",
                              "+1 SET (bit line at +amplitude, word line at v_gate), -1 RESET "
                              "(source line at +amplitude, word line at v_gate)"),
            "amplitude": Array(np.array(grid.amplitudes_v), "V",
                               "write-pulse amplitude on the bit line (SET) or source line "
                               "(RESET)"),
            "width": Array(np.array(grid.widths_s), "s",
                           f"write-pulse width, edges of {hw.drive.t_edge_s:g} s included"),
            "v_gate": Array(np.array(grid.gates_v), "V",
                            "word-line (access-transistor gate) voltage during the pulse; one "
                            "axis for both polarities"),
            "state": Array(_states(hw, grid), "1e26 m^-3",
                           "initial state: oxygen-vacancy concentration N of the bulk"),
            "replica": Array(np.arange(n_r, dtype=np.int64), "1",
                             "Monte Carlo replica (one cycle-to-cycle draw per cell)"),
        }
        g_state = data["g_before"].mean(axis=(0, 1, 2, 3, 5))
        datasets = {
            "dstate_mean": Array(dstate.mean(axis=-1), "1e26 m^-3",
                                 f"mean change of state N made by one pulse, {mc}"),
            "dstate_std": Array(dstate.std(axis=-1, ddof=ddof), "1e26 m^-3",
                                f"spread (std) of the change of state, {mc}"),
            "dg_mean": Array(dg.mean(axis=-1), "S",
                             f"mean change of the 1T1R read conductance (read current / "
                             f"{hw.drive.v_read_v:g} V, read gate {hw.array.v_gate_read_v:g} V) "
                             f"made by one pulse, {mc}"),
            "dg_std": Array(dg.std(axis=-1, ddof=ddof), "S",
                            f"spread (std) of the change of read conductance, {mc}"),
            "dstate": Array(dstate, "1e26 m^-3",
                            "change of state of each Monte Carlo replica (for quantiles)"),
            "dg": Array(dg, "S",
                        "change of read conductance of each Monte Carlo replica"),
            "g_state": Array(g_state, "S",
                             f"1T1R read conductance at each initial state (read at "
                             f"{hw.drive.v_read_v:g} V before the pulse; mean over all jobs)"),
        }
        dims = {key: dims5 for key in ("dstate_mean", "dstate_std", "dg_mean", "dg_std")}
        dims.update({"dstate": dims6, "dg": dims6, "g_state": ("state",)})
        attrs = {
            "representation": "one pulse per cell from each initial state; the grid's "
                              "mean and sample std over Monte Carlo replicas, raw replicas "
                              "kept",
            "gate_axis": "one absolute v_gate axis shared by both polarities; nominal SET gate "
                         f"{hw.drive.v_gate_set_v:g} V, nominal RESET gate "
                         f"{hw.drive.v_gate_reset_v:g} V",
            "random_numbers": "common random numbers: the same kc draws (seed) at every "
                              "polarity, amplitude, width and gate",
            "device_to_device": "not included: nominal kd = wd = 1",
            "seed": int(grid.seed),
            "replicas": int(n_r),
            "c2c_sigma": float(hw.device.c2c_sigma),
            "v_read_v": float(hw.drive.v_read_v),
            "v_gate_read_v": float(hw.array.v_gate_read_v),
            "spice_runs": int(sum(int(np.asarray(r.get("spice_runs", 1))) for r in results)),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: ProgrammingGrid) -> list[str]:
        """The deck of the first job of each polarity (all jobs share its template)."""
        out = []
        points = self.points(hw, grid)
        for polarity in grid.polarities:
            point = next(p for p in points if p["polarity"] == polarity)
            out.append(render_batch_deck(hw, _cells(hw, grid, point),
                                         width_s=float(point["width_s"]), read_before=True,
                                         name="programming").text)
        return out


SURFACE = ProgrammingSurface()
