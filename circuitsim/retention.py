"""Programmed levels left alone: their read conductances over time, solved in ngspice.

The levels' states come from :func:`circuitsim.tile.level_table`; the unbiased devices'
relaxation is one transient of ``netlists.retention``; each state it reaches is read as a
whole 1T1R cell (:func:`circuitsim.tile.measure_cell_conductance`). Never imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from netlists.config import HardwareConfig
from netlists.errors import ConfigError, SimulatorError
from netlists.retention import render_retention_deck, state_vector

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["LevelRetention", "simulate_retention", "plot_retention"]


@dataclass(frozen=True)
class LevelRetention:
    """Levels (indices into ``hw.levels``) over time: ``times_s`` (the first 0),
    ``state`` and ``conductance_us`` (levels x times), the level spacing in uS."""

    levels: np.ndarray
    times_s: np.ndarray
    state: np.ndarray
    conductance_us: np.ndarray
    spacing_us: float
    temperature_k: float
    solve_seconds: float

    @property
    def drift_levels(self) -> np.ndarray:
        """Each level's conductance change at the last time, in level spacings."""
        return (self.conductance_us[:, -1] - self.conductance_us[:, 0]) / self.spacing_us


def simulate_retention(hw: HardwareConfig, *, runner: SpiceRunner, hours: float,
                       levels: Sequence[int] | None = None, temperature_k: float | None = None,
                       points: int = 25) -> LevelRetention:
    """The levels ``levels`` (default: all of ``hw.levels`` up to 16, else 16 spread over
    them) from programming to ``hours`` later at ``temperature_k`` (default the device's
    ambient), sampled at ``points`` log-spaced times from 1 s."""
    from circuitsim.tile import level_table, measure_cell_conductance

    start = time.perf_counter()
    count = hw.levels.count
    if levels is None:
        levels = np.unique(np.linspace(0, count - 1, min(count, 16)).round().astype(int))
    levels = np.asarray(levels)
    if levels.ndim != 1 or levels.size == 0 or np.any(levels < 0) or np.any(levels >= count):
        raise ConfigError(f"levels {levels.tolist()!r} must be indices in [0, {count - 1}] "
                          f"(the configuration has {count} levels)", field="levels")
    if not (np.isfinite(hours) and 0 < hours <= 1000 * 8766):
        raise ConfigError(f"hours = {hours!r} must be in (0, 8766000] (1000 years)",
                          field="hours")
    temp = hw.device.t_ambient_k if temperature_k is None else float(temperature_k)
    if not 2 <= points <= 1000:
        raise ConfigError(f"points = {points!r} must be in [2, 1000]", field="points")
    level_n, level_g = level_table(hw, runner)
    n0 = level_n[levels]
    t_end = hours * 3600.0
    times = np.logspace(0, np.log10(t_end), points) if t_end > 1 else \
        np.linspace(t_end / points, t_end, points)
    deck = render_retention_deck(hw, n0, times, temperature_k=temp)
    res = runner.run(deck.text, name="level_retention")
    try:
        t = np.asarray(res["time"], float)
        states = np.stack([np.interp(times / deck.time_scale, t,
                                     np.asarray(res[state_vector(k)], float))
                           for k in range(len(n0))])
    except KeyError as err:
        raise SimulatorError(f"ngspice returned no vector {err}",
                             netlist="level_retention") from None
    states = np.concatenate([n0[:, None], states], axis=1)
    g = measure_cell_conductance(hw, states, runner=runner, name="retention_reads") * 1e6
    spacing = float(np.diff(level_g).mean()) * 1e6 if len(level_g) > 1 else float("nan")
    return LevelRetention(levels=levels, times_s=np.concatenate([[0.0], times]),
                          state=states, conductance_us=g, spacing_us=spacing,
                          temperature_k=temp, solve_seconds=time.perf_counter() - start)


def plot_retention(result: LevelRetention, path) -> None:
    """Each level's read conductance against the time after programming (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netlists.files import save_png

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    t = result.times_s[1:]
    for k, level in enumerate(result.levels):
        ax.semilogx(t, result.conductance_us[k, 1:], lw=1.2, label=f"level {int(level)}")
    ax.set_xlabel("time after programming, s")
    ax.set_ylabel("1T1R read conductance, uS")
    ax.set_title(f"levels left alone at {result.temperature_k:g} K")
    if len(result.levels) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_png(fig, path)
