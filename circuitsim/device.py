"""One 1T1R cell under SET/RESET pulse trains, solved in ngspice.

:func:`simulate_pulses` is what ``circuitsim device pulses`` runs: it draws the device's
variation from a seed, renders :func:`netlists.programming.render_pulse_deck`, solves it and
reads the cell's conductance after every pulse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitsim.interfaces import SpiceRunner
from netlists.config import HardwareConfig, SolverConfig
from netlists.device_model import Variation, device_model
from netlists.device_model import draw_variation as _draw_model_variation
from netlists.errors import ConfigError, SimulatorError
from netlists.programming import Pulse, render_pulse_deck

__all__ = ["PulseResult", "Variation", "draw_variation", "simulate_pulses",
           "simulate_schedule", "state_for_cell_conductance", "cell_conductance_curve"]


def draw_variation(hw: HardwareConfig, n_pulses: int, seed: int | None) -> Variation:
    """The device model's draws (``kd``, ``wd``, then one ``kc`` per pulse) from
    ``default_rng(seed)``; ``seed=None`` gives the nominal device."""
    if seed is None:
        return Variation(kc=np.ones(n_pulses))
    return _draw_model_variation(device_model(hw), np.random.default_rng(seed), n_pulses)


@dataclass(frozen=True)
class PulseResult:
    conductance_us: np.ndarray  # cell read current / v_read after each pulse (first: before)
    device_conductance_us: np.ndarray  # current / voltage across the RRAM alone at that read
    state: np.ndarray  # vacancy concentration N (1e26 m^-3) at each read
    pulses: tuple[Pulse, ...]
    variation: Variation
    read_voltage_v: float
    max_temperature_rise_k: float
    solve_seconds: float


def cell_conductance_curve(hw: HardwareConfig, *, runner: SpiceRunner, points: int = 121
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(state grid, cell read conductance in S) over the whole window, one ngspice ``.op``."""
    from circuitsim.tile import measure_cell_conductance

    n = np.linspace(hw.device.n_min, hw.device.n_max, points)
    return n, measure_cell_conductance(hw, n, runner=runner, name="cell_curve")


def state_for_cell_conductance(hw: HardwareConfig, g_siemens: np.ndarray, *, runner: SpiceRunner
                               ) -> np.ndarray:
    """The state whose 1T1R read conductance (solved in ngspice) is ``g_siemens``."""
    n, g = cell_conductance_curve(hw, runner=runner)
    target = np.asarray(g_siemens, float)
    if np.any(np.diff(g) <= 0):
        raise SimulatorError("the cell's read conductance is not monotonic in the state",
                             netlist="cell_curve")
    if np.any((target < g[0]) | (target > g[-1])) or not np.all(np.isfinite(target)):
        raise ConfigError(
            f"conductance must lie in the cell's window [{g[0] * 1e6:.4g}, {g[-1] * 1e6:.4g}] uS "
            f"at a {hw.drive.v_read_v:g} V read")
    # Piecewise-linear interpolation in a 121-point grid; the curve is smooth, so the error
    # is far below a programming level (checked in tests against a direct solve).
    return np.interp(target, g, n)


def simulate_pulses(hw: HardwareConfig, n_set: int, n_reset: int, *, runner: SpiceRunner,
                    amplitude_v: float | None = None, width_s: float | None = None,
                    initial_us: float | None = None, seed: int | None = 0,
                    solver: SolverConfig | None = None) -> PulseResult:
    """``n_set`` SET pulses then ``n_reset`` RESET pulses, a read after each.

    Starts from the low-conductance floor (the state after a full RESET, where
    write-and-verify begins) unless ``initial_us`` gives a cell read conductance in uS.
    ``amplitude_v`` (default: ``drive.v_set_pulse_v`` / ``drive.v_reset_pulse_v``) and
    ``width_s`` (default ``drive.t_write_s``) apply to both kinds of pulse.
    """
    for label, count in (("n_set", n_set), ("n_reset", n_reset)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ConfigError(f"{label} = {count!r} must be a whole number >= 0")
    if n_set + n_reset > 100_000:
        raise ConfigError(f"{n_set + n_reset} pulses is too many for one transient "
                          "(at most 100000)")
    drv = hw.drive
    width = drv.t_write_s if width_s is None else float(width_s)
    pulses = tuple(
        [Pulse("set", drv.v_set_pulse_v if amplitude_v is None else float(amplitude_v), width)]
        * n_set
        + [Pulse("reset", drv.v_reset_pulse_v if amplitude_v is None else float(amplitude_v),
                 width)] * n_reset)
    return simulate_schedule(hw, pulses, runner=runner, initial_us=initial_us, seed=seed,
                             solver=solver)


def simulate_schedule(hw: HardwareConfig, pulses: tuple[Pulse, ...], *, runner: SpiceRunner,
                      initial_us: float | None = None, n0: float | None = None,
                      seed: int | None = 0, solver: SolverConfig | None = None,
                      variation: Variation | None = None) -> PulseResult:
    """Any sequence of write pulses on one cell, a read before the first and after each.

    The initial state is ``n0`` if given, else the state whose cell read conductance is
    ``initial_us`` (uS), else the floor ``n_min``. The device's variation is ``variation``
    if given (its ``kc`` one per pulse), else drawn from ``seed``.
    """
    drv = hw.drive
    var = draw_variation(hw, len(pulses), seed) if variation is None else variation
    n_lo, n_hi = device_model(hw).window(var.wd)
    if n0 is not None:
        n0 = float(n0)
    elif initial_us is None:
        n0 = n_lo
    else:
        try:
            n0 = float(state_for_cell_conductance(hw, np.array(initial_us, float) * 1e-6,
                                                  runner=runner))
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"initial_us = {initial_us!r} uS: {err}",
                              field="initial_us") from None
        n0 = float(np.clip(n0 * var.wd, n_lo, n_hi))
    deck = render_pulse_deck(hw, pulses, n0=n0, kc=var.kc, kd=var.kd, wd=var.wd,
                             solver=solver, name="pulses")
    result = runner.run(deck.text, name="pulses")
    t = result["time"]
    i_read = -np.interp(deck.read_times_s, t, result["i(vbl)"])
    v_m = np.interp(deck.read_times_s, t, result["v(m)"])
    state = np.interp(deck.read_times_s, t, result["v(xd.x)"])
    return PulseResult(
        conductance_us=i_read / drv.v_read_v * 1e6,
        device_conductance_us=i_read / (drv.v_read_v - v_m) * 1e6,
        state=state,
        pulses=pulses,
        variation=var,
        read_voltage_v=drv.v_read_v,
        max_temperature_rise_k=float(np.max(result["v(xd.th)"])),
        solve_seconds=result.seconds,
    )
