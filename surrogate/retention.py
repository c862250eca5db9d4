"""Devices left alone after programming: their states a time later, from the ``retention``
surface (``calibration.surfaces.retention``: ngspice transients of unbiased devices).

:meth:`Retention.after` moves each device's state along the surface. A device whose rate
multiplier is ``kd`` drifts as
the nominal device does in ``kd`` times the time (every rate of the model scales with
``kd``), so the lookup is at ``kd t``: in ``log t`` between calibrated times, linearly in
``t`` between 0 and the first one; in the state, linearly between calibrated states.
Between calibrated temperatures the nearest one (in 1/T) is used with the time multiplied
by how much faster the device model relaxes at the asked temperature than at that one
(time-temperature superposition: exact for a relaxation rate that is a function of the
temperature times one of the state, as the compact model's is).
Durations beyond the calibrated ones and temperatures outside them are refused, never
extrapolated.

Interpolation error against the model's closed form, on the ``chip`` grid (5 K, 10 times per
decade, 33 states): at most 0.012 state units (4% of a 16-level spacing) anywhere on it, at
the time of the fastest change; 2e-6 over the first 24 h at 300 K
(``tests/test_retention.py`` checks the lookup on the coarser ``tiny`` grid).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from calibration.store import Table
from netlists.device_model import device_model
from netlists.errors import ConfigError, TableError

__all__ = ["Retention", "parse_duration", "DURATION_UNITS", "MAX_DURATION_S"]

#: Units a duration may carry, in seconds (a year is 365.25 days).
DURATION_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
                  "y": 365.25 * 86400.0}
#: The longest duration accepted anywhere: 1000 years.
MAX_DURATION_S = 1000 * DURATION_UNITS["y"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?\s*([a-z]*)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number and a unit (``90s``, ``30min``, ``2h``, ``24h``,
    ``1.5d``, ``2w``, ``1y``; a bare number is seconds). ConfigError for anything else,
    for a negative duration and beyond :data:`MAX_DURATION_S`."""
    found = _DURATION.match(str(text).lower())
    if not found or found.group(3) not in DURATION_UNITS and found.group(3) != "":
        if str(text).strip().startswith("-"):
            raise ConfigError(f"duration {text!r} is negative: give a time after programming "
                              "such as 2h, 24h or 1y", field="after")
        raise ConfigError(f"duration {text!r} is not a number with a unit: write e.g. 90s, "
                          f"30min, 2h, 24h, 7d, 2w or 1y (units: {', '.join(DURATION_UNITS)})",
                          field="after")
    mantissa, exponent, unit = found.groups()
    seconds = float(mantissa) * 10.0 ** int(exponent or 0) * DURATION_UNITS[unit or "s"]
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ConfigError(f"duration {text!r} is beyond {MAX_DURATION_S / DURATION_UNITS['y']:g}"
                          " years: give a shorter time", field="after")
    return seconds


class Retention:
    """The ``retention`` surface of a table, made executable (see the module docstring)."""

    def __init__(self, table: Table) -> None:
        if "retention" not in table.surfaces:
            raise TableError(f"{table.path}: this calibration has no 'retention' surface, so "
                             "it cannot say what the devices do after programming: build it "
                             "with `circuitsim calibrate --surfaces retention` (with the "
                             "table's preset and --config) or a full `circuitsim calibrate`")
        surface = table.surface("retention")
        self.table = table
        self.temperatures_k = np.asarray(surface.axes["temperature"].data, float)
        self.states = np.asarray(surface.axes["initial_state"].data, float)
        self.times_s = np.asarray(surface.axes["time"].data, float)
        self.state = np.asarray(surface.datasets["state"].data, float)
        self.model = device_model(table.hardware())
        if self.times_s[0] != 0.0 or np.any(np.diff(self.times_s) <= 0) \
                or self.state.shape != (len(self.temperatures_k), len(self.states),
                                        len(self.times_s)):
            raise TableError(f"{table.path}: the 'retention' surface's axes or shape are not "
                             "as written by this version; recalibrate it")

    def check(self, seconds: float, temperature_k: float) -> None:
        """ConfigError when the duration or the temperature is outside what is calibrated."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"duration {seconds!r} s must be a finite number >= 0",
                              field="after")
        lo, hi = float(self.temperatures_k[0]), float(self.temperatures_k[-1])
        if not (isinstance(temperature_k, (int, float)) and math.isfinite(temperature_k)
                and lo <= temperature_k <= hi):
            raise ConfigError(f"temperature {temperature_k!r} K is outside the retention "
                              f"surface's calibrated [{lo:g}, {hi:g}] K: choose one inside, "
                              "or calibrate the surface over a wider range", field="temperature")

    def _nearest(self, temperature_k: float) -> int:
        """The calibrated temperature nearest to ``temperature_k`` in 1/T."""
        return int(np.argmin(np.abs(1 / self.temperatures_k - 1 / temperature_k)))

    def _time_factor(self, state: torch.Tensor, temperature_k: float, k: int) -> torch.Tensor:
        """How much faster the devices at ``state`` relax at ``temperature_k`` than at the
        calibrated temperature ``k``: the model's relaxation rates' ratio there (1 where
        the rate is 0)."""
        t_k = float(self.temperatures_k[k])
        if temperature_k == t_k:
            return torch.ones_like(state)
        n = state.cpu().numpy()
        at, ref = (self.model.relaxation_rate(n, temp) for temp in (temperature_k, t_k))
        ratio = np.where(ref != 0, at / np.where(ref != 0, ref, 1.0), 1.0)
        return torch.as_tensor(ratio, dtype=torch.float64, device=state.device)

    def after(self, state: torch.Tensor, kd: torch.Tensor, seconds: float,
              temperature_k: float) -> torch.Tensor:
        """The states (1e26 m^-3) of devices with rate multipliers ``kd`` programmed to
        ``state``, ``seconds`` later at ``temperature_k``; same shape, dtype and device."""
        self.check(seconds, temperature_k)
        if seconds == 0:
            return state.clone()
        s = state.to(torch.float64).reshape(-1)
        self.table.check_range("retention", "initial_state", s.cpu().numpy())
        k = self._nearest(float(temperature_k))
        grid = torch.as_tensor(self.state[k] - self.states[:, None], dtype=torch.float64,
                               device=state.device)             # the drift, (states, times)
        t = (kd.to(torch.float64).reshape(-1) * float(seconds)
             * self._time_factor(s, float(temperature_k), k))
        t_max = float(self.times_s[-1])
        if float(t.max()) > t_max:
            raise ConfigError(f"{seconds:g} s after programming lies beyond the retention "
                              f"surface's calibrated {t_max:g} s for some devices (a device "
                              f"with rate multiplier kd drifts as in kd times the time): "
                              "choose a shorter time, or calibrate a longer one", field="after")
        states = torch.as_tensor(self.states, dtype=torch.float64, device=state.device)
        i = torch.clamp(torch.searchsorted(states, s) - 1, 0, len(self.states) - 2)
        fs = (s - states[i]) / (states[i + 1] - states[i])
        times = torch.as_tensor(self.times_s, dtype=torch.float64, device=state.device)
        j = torch.clamp(torch.searchsorted(times, t, right=True) - 1, 0, len(self.times_s) - 2)
        first = float(times[1])
        t0, t1 = torch.clamp(times[j], min=first), times[j + 1]
        ft = (torch.log(torch.clamp(t, min=first)) - torch.log(t0)) / (torch.log(t1)
                                                                      - torch.log(t0))

        def along_time(row: torch.Tensor) -> torch.Tensor:
            # before the first calibrated time: proportional to t (the drift's start);
            # after it: log-linear in log t (exact for a power law)
            early = grid[row, 1] * t / first
            return torch.where(j == 0, early,
                               _loglerp(grid[row, j], grid[row, j + 1], ft, torch))

        # Linear in the programmed state (exact for a drift linear in it).
        out = s + (1 - fs) * along_time(i) + fs * along_time(i + 1)
        return out.reshape(state.shape).to(state.dtype)


def _loglerp(a, b, w, xp):
    """``a`` to ``b`` at weight ``w``: geometric where both have the same sign, else linear."""
    same = a * b > 0
    safe_a = xp.where(same, xp.abs(a), 1.0)
    safe_b = xp.where(same, xp.abs(b), 1.0)
    geometric = xp.sign(a) * xp.exp((1 - w) * xp.log(safe_a) + w * xp.log(safe_b))
    return xp.where(same, geometric, (1 - w) * a + w * b)
