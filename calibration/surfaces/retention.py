"""The ``retention`` surface: a device's state after a time left alone, vs its programmed
state and the temperature, solved in ngspice.

Each job is one temperature: every programmed state of the grid, three times (the nominal
device ``kd = 1`` and the device-to-device quantiles ``kd = exp(-+spread_z d2d_rate_sigma)``),
in one transient of unbiased devices (``netlists.retention``) sampled at the grid's times.
``state`` holds the nominal device, ``state_spread`` the two quantiles: the spread of the
drift over devices. The model's rates all scale with ``kd``, so a device with ``kd`` drifts
as the nominal one does in ``kd`` times the time (``surrogate.retention`` uses that, and the
two quantile columns check it).

Axes: ``temperature`` (K), ``initial_state`` (1e26 m^-3, the window of devices whose window
draw is up to 4 sigma out), ``time`` (s after programming, log-spaced, the first entry 0:
the programmed state itself).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid, result_vector
from netlists.config import HardwareConfig
from netlists.errors import ConfigError, SimulatorError
from netlists.retention import render_retention_deck, state_vector

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["RetentionGrid", "RetentionSurface", "SURFACE", "SPREAD_Z"]

#: The device-to-device quantiles in ``state_spread``: kd at -+2 sigma (2.3% and 97.7%).
SPREAD_Z = 2.0
#: Programmed states span the window of devices whose window draw is this many sigma out.
_WINDOW_SIGMAS = 6.0


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"retention grid: {name} = {value!r} must be a number in "
                          f"[{lo:g}, {hi:g}]")
    return float(value)


@dataclass(frozen=True)
class RetentionGrid:
    """What the ``retention`` surface solves.

    ``temperatures_k``: increasing, in [1, 600] K, one ngspice transient each;
    ``states``: programmed states, evenly spaced over the devices' window;
    ``t_min_s`` .. ``t_max_s``: the log-spaced sample times (and 0), ``points_per_decade``
    of them per decade.
    """

    temperatures_k: tuple[float, ...] = tuple(float(t) for t in range(250, 401, 5))
    states: int = 33
    t_min_s: float = 1.0
    t_max_s: float = 3.2e9
    points_per_decade: int = 10

    def __post_init__(self) -> None:
        temps = self.temperatures_k
        if isinstance(temps, (str, bytes)) or not isinstance(temps, (tuple, list)) \
                or not temps or len(temps) > 200:
            raise ConfigError(f"retention grid: temperatures_k = {temps!r} must be a list "
                              "of 1 to 200 temperatures, K")
        temps = tuple(_number("temperatures_k", t, 1.0, 600.0) for t in temps)
        if any(b <= a for a, b in zip(temps, temps[1:])):
            raise ConfigError(f"retention grid: temperatures_k = {list(temps)!r} must be "
                              "increasing")
        object.__setattr__(self, "temperatures_k", temps)
        for name, lo, hi in (("states", 2, 1000), ("points_per_decade", 1, 100)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) \
                    or not lo <= v <= hi:
                raise ConfigError(f"retention grid: {name} = {v!r} must be a whole number "
                                  f"in [{lo}, {hi}]")
        t_min = _number("t_min_s", self.t_min_s, 1e-9, 1e12)
        t_max = _number("t_max_s", self.t_max_s, 1e-9, 1e12)
        if not t_max > t_min:
            raise ConfigError(f"retention grid: t_max_s = {t_max!r} must exceed t_min_s = "
                              f"{t_min!r}")

    def times_s(self) -> np.ndarray:
        """The sample times after 0, s: log-spaced from ``t_min_s`` to ``t_max_s``."""
        decades = np.log10(self.t_max_s / self.t_min_s)
        n = max(2, int(np.ceil(decades * self.points_per_decade)) + 1)
        return np.logspace(np.log10(self.t_min_s), np.log10(self.t_max_s), n)

    def initial_states(self, hw: HardwareConfig) -> np.ndarray:
        d = hw.device
        margin = np.exp(_WINDOW_SIGMAS * d.d2d_window_sigma)
        return np.linspace(d.n_min / margin, d.n_max * margin, self.states)


_PRESET_GRIDS = {
    "tiny": RetentionGrid(temperatures_k=(300.0, 330.0, 358.0), states=9,
                          points_per_decade=4),
    # 5 K apart: between two temperatures the state is interpolated in 1/T (see
    # surrogate.retention for the error that leaves).
    "chip": RetentionGrid(),
    "paper-sim": RetentionGrid(),
}


def _spread_kd(hw: HardwareConfig) -> np.ndarray:
    s = hw.device.d2d_rate_sigma
    return np.array([1.0, np.exp(-SPREAD_Z * s), np.exp(SPREAD_Z * s)])


class RetentionSurface:
    name = "retention"
    grid_type = RetentionGrid

    def grid(self, preset: str) -> RetentionGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: RetentionGrid) -> list[dict[str, Any]]:
        return [{"temperature_k": t} for t in grid.temperatures_k]

    def _deck(self, hw: HardwareConfig, grid: RetentionGrid, temperature_k: float):
        states = grid.initial_states(hw)
        kd = np.repeat(_spread_kd(hw), len(states))
        return render_retention_deck(hw, np.tile(states, 3), grid.times_s(), kd=kd,
                                     temperature_k=temperature_k,
                                     name=f"retention_{temperature_k:g}K")

    def solve(self, hw: HardwareConfig, grid: RetentionGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        temp = float(point["temperature_k"])
        deck = self._deck(hw, grid, temp)
        name = f"retention_{temp:g}K"
        res = runner.run(deck.text, name=name)
        t = result_vector(res, "time", name)
        at = deck.times_s / deck.time_scale
        if t[-1] < at[-1] * (1 - 1e-9):
            raise SimulatorError(f"the transient stopped at {t[-1]!r} s of {at[-1]!r} s",
                                 netlist=name)
        n0 = np.tile(grid.initial_states(hw), 3)
        states = np.stack([np.concatenate([[n0[k]], np.interp(
            at, t, result_vector(res, state_vector(k), name))]) for k in range(deck.devices)])
        s = grid.states
        return {"state": states[:s], "state_spread": np.stack([states[s:2 * s],
                                                               states[2 * s:]], axis=-1),
                "solve_seconds": np.array(time.perf_counter() - start)}

    def assemble(self, hw: HardwareConfig, grid: RetentionGrid,
                 points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        if len(points) != len(grid.temperatures_k) or len(results) != len(points):
            raise ConfigError("retention surface: results do not cover the grid")
        state = np.stack([np.asarray(r["state"], float) for r in results])
        spread = np.stack([np.asarray(r["state_spread"], float) for r in results])
        times = np.concatenate([[0.0], grid.times_s()])
        kd = _spread_kd(hw)
        axes = {
            "temperature": Array(np.array(grid.temperatures_k), "K", "ambient temperature"),
            "initial_state": Array(grid.initial_states(hw), "1e26 m^-3",
                                   "programmed state (at time 0)"),
            "time": Array(times, "s", "time after programming, unbiased"),
        }
        datasets = {
            "state": Array(state, "1e26 m^-3", "state of the nominal device (kd = 1)"),
            "state_spread": Array(spread, "1e26 m^-3",
                                  f"state of the devices at the device-to-device quantiles "
                                  f"kd = exp(-+{SPREAD_Z:g} d2d_rate_sigma) = "
                                  f"{kd[1]:.4g}, {kd[2]:.4g} (trailing axis)"),
        }
        dims = {"state": ("temperature", "initial_state", "time"),
                "state_spread": ("temperature", "initial_state", "time")}
        attrs = {
            "spread_z": SPREAD_Z,
            "spread_kd": kd[1:].tolist(),
            "relaxes_towards": hw.device.n_init,
            "bias": "zero: both electrodes on ground",
            "spice_runs": len(points),
            "solve_seconds": float(sum(float(np.asarray(r.get("solve_seconds", 0.0)))
                                       for r in results)),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: RetentionGrid) -> list[str]:
        return [self._deck(hw, grid, grid.temperatures_k[0]).text]


SURFACE = RetentionSurface()
