"""Write-and-verify in torch: the paper's programming procedure driven by calibrated pulses.

:class:`ProgrammingModel` runs the state machine of :func:`circuitsim.write_verify.write_verify`
(its module docstring has the procedure: floor phase, rounds of adaptive SET and adaptive
RESET, the same caps and counters) on tensors of devices of any shape, with the effect of
each pulse taken from the calibration table instead of an ngspice transient. The only loop
is over pulse steps; it ends as soon as every device is done. Everything is float32 by
default and runs on the device of the targets (CPU or CUDA).

What one pulse does
-------------------
The state ``N`` (oxygen-vacancy concentration, 1e26 m^-3) is the model's variable; a verify
read is the 1T1R read conductance ``g(N)``. A SET (RESET) pulse of amplitude ``a`` moves a
device with rate multipliers ``kd`` (device-to-device) and ``kc`` (cycle-to-cycle, drawn
afresh for every pulse) and window scale ``wd`` by::

    u     = N / wd                                        state relative to the device's window
    |dN|  = w(u) * exp(D(a, u) + B(a, u) * ln(kd * kc))
    w(u)  = 1 - (u / n_max)^p_window_set                  SET
          = 1 - (n_min / u)^p_window_reset                RESET
    N'    = clip(N + sign * |dN|, n_min * wd, n_max * wd)

``w`` is the compact model's own window factor (``netlists/device.py``), exact for any
``wd``; ``D`` (the log of the window-free response) and ``B`` (its elasticity to the rate
multiplier) come from the ``programming`` surface at the drive's pulse width
``drive.t_write_s`` and gate voltages ``drive.v_gate_set_v`` (SET) and
``drive.v_gate_reset_v`` (RESET), selected on the table's axes or interpolated between
them (``ln |dN|`` linear in ``ln width`` and in ``v_gate``); values outside the axes are
refused with a :class:`~netlists.errors.TableError`.

Why this form (numbers from the ``chip`` calibration: 16 amplitudes x 13 states x 8
replicas):

* *Cycle-to-cycle spread.* The surface's replicas use common random numbers: replica
  ``(state s, r)`` has ``kc[s, r] = exp(c2c_sigma z)`` from ``default_rng(seed)``, the same
  at every grid point (``calibration/surfaces/programming.py``). Regenerated, these draws
  explain the replicas: at every grid point off the window bounds, one straight line in
  ``ln kc`` fits ``ln |dN_r|`` within 2e-4 rms (3e-3 worst). So each grid point is fitted
  by least squares: the intercept is the nominal response (``kc = 1``; the replicas' plain
  mean carries their sample mean of ``kc``, 0.92 to 1.08 per state on this table), the
  slope ``B`` says how strongly the response follows the rate. ``B`` is 1 within 1.2 %
  where a pulse moves the state by less than 0.01, and falls where one pulse sweeps much
  of the window against its bound: 0.48 for a 3 V SET from the floor at the nominal gate
  and width. ``kd`` multiplies the same rate as ``kc`` in the compact model, so it enters
  as ``ln k = ln kd + ln kc`` with the same ``B``. A table whose replicas these draws do
  not explain is refused.
* *Amplitude.* Switching is exponential in voltage (~1.9x per 0.1 V at low amplitude):
  ``D`` and ``B`` are interpolated along the amplitude with a monotone cubic (PCHIP) in
  log space, resampled once on a 5 mV grid (linear at run time). Leaving out every other
  amplitude of the chip grid (0.2 V apart), PCHIP predicts it within 4.3 % (SET) and
  1.3 % (RESET), linear-in-log within 5 %; on a 3-point grid 0.75 V apart (the ``tiny``
  preset) PCHIP errs by up to 26 % / 17 %, linear-in-log 30 % / 32 %.
* *State.* The window factor goes to zero at a bound (``dN`` -> 0 at ``n_max`` for SET)
  while the rest of the response varies smoothly, so it is divided out and
  ``D = ln(|dN| / w)`` is interpolated linearly in the state. Predicting the chip grid's
  states from every third one (the ``tiny`` grid) errs by < 5 % except next to a bound
  (9 % for SET next to the top, 20 % for RESET next to the floor), against 48 % and 76 %
  for ``|dN|`` linear in the state. At a grid node on a bound (``w = 0`` there) ``D`` is
  extrapolated linearly from its two neighbours.
* *Device-to-device window.* ``wd`` scales ``n_min`` and ``n_max``. The window factor sees
  ``u = N / wd`` exactly; the rest of the response is taken at ``u`` too, although in the
  compact model it depends on the absolute state through the cell current. Its
  sensitivity ``|d ln D / d ln N|`` is about 0.5, so ``wd = exp(0.03 z)`` changes a pulse
  by ~1.5 %, against 10 % for ``kc`` and ``kd``.

Reading
-------
``g(N)`` is the ``cell_read`` surface's ``g_read`` (1T1R read at ``drive.v_read_v``, read
gate ``array.v_gate_read_v``) through a not-a-knot cubic spline in the state, resampled on
1025 points. A spline through every 16th of the chip table's 65 states (the ``tiny`` grid)
reproduces the others within 0.40 tolerance (0.06 uS); linear interpolation would be off
by 1.25 tolerance. Conduction depends on the state only, not on ``kd`` or ``wd``; but a
device with ``wd != 1`` reaches states outside the table's axis, and there ``g`` is
continued linearly with the spline's end slope (an explicit, documented extrapolation).
Checked by fitting only the chip table's inner states: continuing 0.09 (0.18) below the
fitted range errs by 0.06 (0.19) tolerance, 0.63 above it by 0.17 tolerance; a 3-sigma
``wd`` reaches 0.04 below ``n_min`` and 0.59 above ``n_max``. The nominal read window
``window_s`` is ``(g(n_min), g(n_max))``.

Read noise: each verify read adds a normal draw of standard deviation
``device.read_noise_sigma * (window_s[1] - window_s[0])`` when ``read_noise=True`` (the
default); ngspice's reads, and the table's own ``write_verify`` surface, are noise-free, so
comparisons against them switch it off. ``ProgramResult.g_reached`` is, as in
``write_verify``, the last *verify read* and ``success`` is judged on it (noisy when read
noise is on); the conductance a device actually has is ``model.read(result.state,
devices)``.

Measured against ngspice
------------------------
The ``chip`` calibration (``chip-bae89a309f2e3854``; its ``write_verify`` surface is 32
targets x 8 cells, every step solved in ngspice) against the surrogate on the same 32
targets x 4096 devices, read noise off (1 level = 0.292 uS, tolerance 0.5 level):

==============================  ======================  ======================
                                ngspice (256 cells)     surrogate
==============================  ======================  ======================
success rate                    0.992                   0.987
mean write pulses (SET, RESET)  48.6 (28.1, 20.5)       48.6 (28.7, 19.7)
error mean                      0.251 level             0.237 level
program error std               0.129 uS (0.443 level)  0.146 uS (0.499 level)
  of the successful cells       0.279 level             0.272 level
error rms                       0.149 uS (0.508 level)  0.161 uS (0.552 level)
==============================  ======================  ======================

(The larger overall spread of the surrogate comes from the failures: devices with
``wd < 1`` that cannot reach the two top targets, 1.3 % against ngspice's 2 of 256.)
Replaying 24 ngspice cells' own pulse sequences (8 targets over the window, 45 pulses a
cell on average, each cell's ``kd``, ``wd`` and per-pulse ``kc``) through
:meth:`ProgrammingModel.pulse` ends within 0.66 level rms (1.8 worst) of ngspice's final
conductance on the chip table, 3.9 rms (6.7 worst) on the ``tiny`` one.

Programming 64 x 64 x 16 devices (65,536) from their floor to random levels takes 0.47 s
on one CPU thread (0.42 s on two; 142 pulse steps). With the default read noise
(``read_noise_sigma = 0.02``, i.e. 2.5 levels, 5x the tolerance) a verify read passes by
chance: 75 % of the devices end with a read within tolerance after 39 pulses on average,
but only 11 % actually are, and the conductance error is 2.8 levels rms (0.55 without
noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.interpolate import CubicSpline, PchipInterpolator

from circuitsim.write_verify import DEFAULT_LEVELS
from netlists.config import HardwareConfig
from netlists.errors import ConfigError, TableError

__all__ = ["Devices", "ProgramResult", "ProgrammingModel"]

_FLOOR, _SET, _RESET, _DONE = 0, 1, 2, 3
#: Resampling step of the amplitude axis, V (the adaptive phases step by 50 and 100 mV).
_AMPLITUDE_STEP_V = 0.005
#: Points of the resampled read-conductance curve over the table's state axis.
_G_POINTS = 1025
#: Largest rms misfit (in ln) of the replicas against the regenerated cycle-to-cycle draws,
#: as a fraction of c2c_sigma: draws that match leave ~2e-3 of sigma (chip table), draws
#: that do not leave ~1.4 sigma.
_KC_MISFIT = 0.25
#: |dstate| below this (1e26 m^-3) is solver noise, not a response (the bound nodes hold
#: +-5e-9 of either sign).
_DSTATE_FLOOR = 1e-12
#: Dimensions of the programming surface's raw replicas.
_DSTATE_DIMS = ("polarity", "amplitude", "width", "v_gate", "state", "replica")
#: Relative slack of the window check on targets (as circuitsim.write_verify).
_WINDOW_SLACK = 1e-9


@dataclass(frozen=True)
class Devices:
    """Device-to-device draws of a set of devices: ``kd`` multiplies the switching rate,
    ``wd`` scales ``n_min`` and ``n_max``; two tensors of the same shape."""

    kd: torch.Tensor
    wd: torch.Tensor

    def __post_init__(self) -> None:
        if not (isinstance(self.kd, torch.Tensor) and isinstance(self.wd, torch.Tensor)):
            raise ConfigError("Devices needs two tensors kd and wd")
        if self.kd.shape != self.wd.shape:
            raise ConfigError(f"Devices: kd has shape {tuple(self.kd.shape)} but wd has "
                              f"{tuple(self.wd.shape)}")

    @classmethod
    def nominal(cls, shape: Sequence[int] | int, *, device: Any = None,
                dtype: torch.dtype = torch.float32) -> Devices:
        """Devices without device-to-device variation (``kd = wd = 1``)."""
        ones = torch.ones(shape, device=device, dtype=dtype)
        return cls(kd=ones, wd=ones.clone())

    @property
    def shape(self) -> torch.Size:
        return self.kd.shape

    @property
    def device(self) -> torch.device:
        return self.kd.device

    def __len__(self) -> int:
        return len(self.kd)

    def __getitem__(self, index: Any) -> Devices:
        """The devices at ``index`` (anything a tensor accepts: a boolean mask, indices...)."""
        return Devices(kd=self.kd[index], wd=self.wd[index])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Devices:
        """On ``device`` and/or as ``dtype`` (``devices.to(torch.float64)`` works too)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return Devices(kd=self.kd.to(device=device, dtype=dtype),
                       wd=self.wd.to(device=device, dtype=dtype))

    def reshape(self, *shape: int) -> Devices:
        return Devices(kd=self.kd.reshape(*shape), wd=self.wd.reshape(*shape))


@dataclass(frozen=True)
class ProgramResult:
    """Outcome per device, every tensor in the targets' shape (as ``WriteVerifyResult``).

    ``g_reached``: the last verify read, S (noisy with read noise on; the device's actual
    conductance is ``ProgrammingModel.read(state, devices)``). ``state``: N at the end,
    1e26 m^-3. ``pulses`` = ``set_pulses + reset_pulses + floor_pulses`` (int32);
    ``reset_pulses`` counts the adaptive RESET phases, ``floor_pulses`` the reset-to-floor
    phase. ``rounds``: rounds started (0: within tolerance after the floor phase).
    ``success``: the last verify read lies within the tolerance of the target.
    """

    g_reached: torch.Tensor
    state: torch.Tensor
    pulses: torch.Tensor
    set_pulses: torch.Tensor
    reset_pulses: torch.Tensor
    floor_pulses: torch.Tensor
    rounds: torch.Tensor
    success: torch.Tensor


def _whole(label: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{label} = {value!r} must be a whole number >= {lo}")
    return int(value)


def _step(label: str, value: object, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(value) or not 0.0 < value <= hi:
        raise ConfigError(f"{label} = {value!r} is out of range: allowed (0, {hi:g}]")
    return float(value)


def _bracket(axis: np.ndarray, value: float, *, log: bool = False) -> tuple[int, int, float]:
    """Indices and weight of ``value`` between two nodes of ``axis`` (on a node: weight 0)."""
    x = np.log(axis) if log else np.asarray(axis, dtype=float)
    v = math.log(value) if log else float(value)
    hit = np.flatnonzero(np.isclose(x, v, rtol=1e-9, atol=1e-12))
    if hit.size:
        return int(hit[0]), int(hit[0]), 0.0
    i = int(np.clip(np.searchsorted(x, v) - 1, 0, x.size - 2))
    return i, i + 1, float((v - x[i]) / (x[i + 1] - x[i]))


def _window_factor(hw: HardwareConfig, polarity: int, u: np.ndarray) -> np.ndarray:
    d = hw.device
    if polarity > 0:
        return np.clip(1.0 - (u / d.n_max) ** d.p_window_set, 0.0, None)
    return np.clip(1.0 - (d.n_min / u) ** d.p_window_reset, 0.0, None)


def _fill_bounds(values: np.ndarray, inside: np.ndarray, x: np.ndarray, *,
                 extrapolate: bool) -> np.ndarray:
    """``values`` (last axis along ``x``) with the nodes outside ``inside`` replaced by a
    linear extrapolation from their two nearest inside nodes (or the nearest one's value)."""
    out = values.copy()
    good = np.flatnonzero(inside)
    for j in np.flatnonzero(~inside):
        near = good[np.argsort(np.abs(good - j), kind="stable")[:2]]
        if not extrapolate or near.size < 2:
            out[..., j] = values[..., near[0]]
            continue
        k0, k1 = sorted(int(k) for k in near)
        slope = (values[..., k1] - values[..., k0]) / (x[k1] - x[k0])
        out[..., j] = values[..., k0] + slope * (x[j] - x[k0])
    return out


class ProgrammingModel:
    """Write-and-verify of many devices at once on a calibrated pulse response (module
    docstring). Build it with :meth:`from_table`."""

    levels: int = DEFAULT_LEVELS

    def __init__(self, hw: HardwareConfig, *, g_state: np.ndarray, g_values: np.ndarray,
                 amplitudes: np.ndarray, states: np.ndarray, log_response: np.ndarray,
                 elasticity: np.ndarray, device: Any = None,
                 dtype: torch.dtype = torch.float32) -> None:
        """Low-level constructor (use :meth:`from_table`). ``g_state``/``g_values``: the read
        conductance on a uniform state grid. ``amplitudes``: uniform grid, V.
        ``log_response``, ``elasticity``: ``D`` and ``B`` as [polarity (0 RESET, 1 SET),
        amplitude, state]."""
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype = {dtype} must be a floating-point type")
        self.hw = hw
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        d = hw.device
        g_lo, g_hi = np.interp([d.n_min, d.n_max], g_state, g_values)
        self.window_s: tuple[float, float] = (float(g_lo), float(g_hi))
        self.level_spacing_s = (g_hi - g_lo) / (self.levels - 1)
        self.tolerance_s: float = 0.5 * self.level_spacing_s
        self.floor_s: float = g_lo + self.level_spacing_s
        self.read_noise_s: float = d.read_noise_sigma * (g_hi - g_lo)
        self._g0, self._gdx = float(g_state[0]), float(g_state[1] - g_state[0])
        self._a0 = float(amplitudes[0])
        self._adx = float(amplitudes[1] - amplitudes[0])
        self._na, self._ns = amplitudes.size, states.size
        steps = np.diff(states)
        self._s0, self._sdx = float(states[0]), float(steps[0])
        self._state_uniform = bool(np.allclose(steps, steps[0], rtol=1e-9, atol=0))
        # bilinear coefficients of (D, B) per grid cell: v = a + fa (b + fs d) + fs c
        v = np.stack([log_response, elasticity], axis=-1)  # [pol, amp, state, 2]
        c00, c10 = v[:, :-1, :-1], v[:, 1:, :-1]
        c01, c11 = v[:, :-1, 1:], v[:, 1:, 1:]
        coef = np.concatenate([c00, c10 - c00, c01 - c00, c11 - c10 - c01 + c00], axis=-1)
        self._host = {"g": np.asarray(g_values, float), "states": np.asarray(states, float),
                      "coef": coef.reshape(-1, 8)}
        self._cache: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._tensors(self.device)

    # ---- construction from a calibration ------------------------------------------------

    @classmethod
    def from_table(cls, table: Any, *, device: Any = None,
                   dtype: torch.dtype = torch.float32) -> ProgrammingModel:
        """The model of ``table`` (a :class:`calibration.store.Table`): its hardware, its
        ``cell_read`` and ``programming`` surfaces. TableError when one is missing or does
        not cover the hardware's drive (pulse width, gate voltages, amplitude range, the
        state window)."""
        hw = table.hardware()
        d, drv = hw.device, hw.drive
        cell = table.surface("cell_read")
        prog = table.surface("programming")
        for surface, names in (("cell_read", ("state",)),
                               ("programming", ("polarity", "amplitude", "width", "v_gate",
                                                "state", "replica"))):
            data = table.surface(surface)
            for name in names:
                if name not in data.axes:
                    raise TableError(f"{table.path}: surface {surface!r} has no axis {name!r}; "
                                     "recalibrate with `circuitsim calibrate`")
        for surface, name in (("cell_read", "g_read"), ("programming", "dstate")):
            if name not in table.surface(surface).datasets:
                raise TableError(f"{table.path}: surface {surface!r} has no dataset {name!r}; "
                                 "recalibrate with `circuitsim calibrate`")
        dims = tuple(prog.dims.get("dstate", ()))
        if dims != _DSTATE_DIMS:
            raise TableError(f"{table.path}: programming.dstate has dimensions {dims}, "
                             f"expected {_DSTATE_DIMS}; recalibrate with `circuitsim calibrate`")
        window = [d.n_min, d.n_max]
        table.check_range("cell_read", "state", window)
        table.check_range("programming", "state", window)
        table.check_range("programming", "width", [drv.t_write_s])
        table.check_range("programming", "v_gate", [drv.v_gate_set_v, drv.v_gate_reset_v])
        table.check_range("programming", "amplitude",
                          [drv.v_set_min_v, drv.v_set_max_v, drv.v_reset_min_v,
                           drv.v_reset_max_v])
        polarity = np.asarray(prog.axes["polarity"].data).tolist()
        if sorted(polarity) != [-1, 1]:
            raise TableError(f"{table.path}: the programming surface's polarity axis is "
                             f"{polarity}: write-and-verify needs both -1 (RESET) and +1 "
                             "(SET); recalibrate with both")

        # read conductance: cubic spline in the state, resampled on a uniform grid
        s_read = np.asarray(cell.axes["state"].data, float)
        g_read = np.asarray(cell.datasets["g_read"].data, float)
        if s_read.size < 2 or g_read.shape != s_read.shape or np.any(np.diff(s_read) <= 0) \
                or np.any(np.diff(g_read) <= 0) or not np.all(np.isfinite(g_read)):
            raise TableError(f"{table.path}: cell_read.g_read must rise strictly with the "
                             "state; recalibrate with `circuitsim calibrate`")
        spline = CubicSpline(s_read, g_read) if s_read.size >= 4 else None
        g_state = np.linspace(s_read[0], s_read[-1], _G_POINTS)
        g_values = spline(g_state) if spline is not None else np.interp(g_state, s_read,
                                                                         g_read)

        # pulse response: fit against the regenerated cycle-to-cycle draws
        amps = np.asarray(prog.axes["amplitude"].data, float)
        widths = np.asarray(prog.axes["width"].data, float)
        gates = np.asarray(prog.axes["v_gate"].data, float)
        states = np.asarray(prog.axes["state"].data, float)
        dstate = np.asarray(prog.datasets["dstate"].data, float)
        expected = (2, amps.size, widths.size, gates.size, states.size,
                    prog.axes["replica"].data.size)
        if dstate.shape != expected or not np.all(np.isfinite(dstate)):
            raise TableError(f"{table.path}: programming.dstate has shape {dstate.shape}, "
                             f"expected {expected} and finite values; recalibrate")
        log_dn, slope = cls._fit_replicas(table, hw, prog, dstate, polarity)
        # select or interpolate the drive's width and gate voltages
        wi0, wi1, wf = _bracket(widths, drv.t_write_s, log=True)
        log_w = {k: (1 - wf) * v[:, :, wi0] + wf * v[:, :, wi1]
                 for k, v in (("L", log_dn), ("B", slope))}  # [pol, amp, gate, state]
        curves = {"L": [], "B": []}
        for pol in (-1, 1):
            ip = polarity.index(pol)
            gate = drv.v_gate_set_v if pol > 0 else drv.v_gate_reset_v
            gi0, gi1, gf = _bracket(gates, gate)
            for key, curve in curves.items():
                v = log_w[key][ip]
                curve.append((1 - gf) * v[:, gi0] + gf * v[:, gi1])  # [amp, state]
        # divide out the window factor; at a bound node extrapolate along the state
        response, elastic = [], []
        for k, pol in enumerate((-1, 1)):
            w = _window_factor(hw, pol, states)
            inside = w > 0
            if not inside.any():
                raise TableError(f"{table.path}: the programming surface's states all lie on "
                                 "the window bounds; recalibrate with interior states")
            with np.errstate(divide="ignore"):
                drive = curves["L"][k] - np.log(np.where(inside, w, 1.0))
            response.append(_fill_bounds(drive, inside, states, extrapolate=True))
            elastic.append(_fill_bounds(curves["B"][k], inside, states, extrapolate=False))
        # amplitude: monotone cubic in log space, resampled on a uniform grid
        n_fine = round(float(amps[-1] - amps[0]) / _AMPLITUDE_STEP_V) + 1
        fine = np.linspace(amps[0], amps[-1], max(n_fine, 2))
        resp = np.stack([PchipInterpolator(amps, r, axis=0)(fine) for r in response])
        elas = np.stack([PchipInterpolator(amps, b, axis=0)(fine) for b in elastic])
        return cls(hw, g_state=g_state, g_values=g_values, amplitudes=fine, states=states,
                   log_response=resp, elasticity=elas, device=device, dtype=dtype)

    @staticmethod
    def _fit_replicas(table: Any, hw: HardwareConfig, prog: Any, dstate: np.ndarray,
                      polarity: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per grid point, ``ln |dN_r| = L + B ln kc_r`` by least squares over the replicas
        (kc regenerated from the surface's seed); returns ``L``, ``B`` over the five grid
        axes."""
        n_states, n_rep = dstate.shape[-2:]
        sigma = float(prog.attrs.get("c2c_sigma", hw.device.c2c_sigma))
        seed = prog.attrs.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TableError(f"{table.path}: the programming surface has no integer 'seed' "
                             "attribute (its cycle-to-cycle draws); recalibrate")
        rng = np.random.default_rng(int(seed))
        ln_kc = sigma * rng.standard_normal((n_states, n_rep))
        sign = np.array([1.0 if p > 0 else -1.0 for p in polarity])
        signed = dstate * sign[:, None, None, None, None, None]
        ln_dn = np.log(np.maximum(signed, _DSTATE_FLOOR))
        mean_kc = ln_kc.mean(axis=-1, keepdims=True)
        dev_kc = ln_kc - mean_kc
        ss = (dev_kc ** 2).sum(axis=-1)  # [state]
        mean_dn = ln_dn.mean(axis=-1)
        if sigma == 0.0:
            return mean_dn, np.ones_like(mean_dn)
        slope = ((ln_dn - mean_dn[..., None]) * dev_kc).sum(axis=-1) / ss
        intercept = mean_dn - slope * mean_kc[:, 0]
        # do the regenerated draws explain the replicas? (interior, moving nodes only)
        fitted = intercept[..., None] + slope[..., None] * ln_kc
        moving = np.all(signed > 1e3 * _DSTATE_FLOOR, axis=-1)
        for pol_i, pol in enumerate(polarity):
            moving[pol_i] &= _window_factor(hw, pol, prog.axes["state"].data) > 0
        resid = (ln_dn - fitted)[moving]
        misfit = float(np.sqrt(np.mean(resid ** 2))) if resid.size else 0.0
        if misfit > _KC_MISFIT * sigma:
            raise TableError(
                f"{table.path}: the programming surface's replicas do not follow the "
                f"cycle-to-cycle draws of its seed {int(seed)} (rms misfit {misfit:.3g} in "
                f"ln, c2c_sigma {sigma:g}): the table was made with another random scheme; "
                "recalibrate with `circuitsim calibrate`")
        return intercept, slope

    # ---- tensors on a device --------------------------------------------------------------

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        found = self._cache.get(device)
        if found is None:
            found = {k: torch.as_tensor(v, dtype=self.dtype, device=device)
                     for k, v in self._host.items()}
            self._cache[device] = found
        return found

    def to(self, device: Any) -> ProgrammingModel:
        """Make ``device`` the default device (tables are cached per device)."""
        self.device = torch.device(device)
        self._tensors(self.device)
        return self

    # ---- public helpers -------------------------------------------------------------------

    def level_conductances(self) -> torch.Tensor:
        """The ``levels`` conductances spread evenly over ``window_s``, S."""
        return torch.linspace(self.window_s[0], self.window_s[1], self.levels,
                              dtype=self.dtype, device=self.device)

    def draw_devices(self, shape: Sequence[int] | int, *,
                     generator: torch.Generator) -> Devices:
        """Device-to-device draws ``kd = exp(d2d_rate_sigma z)``, ``wd = exp(d2d_window_sigma
        z')`` of ``shape``, on the model's device."""
        d = self.hw.device
        z = self._randn((2, *torch.Size([shape] if isinstance(shape, int) else shape)),
                        generator, self.device, self.dtype)
        return Devices(kd=torch.exp(d.d2d_rate_sigma * z[0]),
                       wd=torch.exp(d.d2d_window_sigma * z[1]))

    def floor_state(self, devices: Devices) -> torch.Tensor:
        """The state a full RESET leaves: ``n_min * wd``."""
        return self.hw.device.n_min * devices.wd.to(self.dtype)

    def read(self, state: torch.Tensor, devices: Devices, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Read conductance (S) of devices at ``state``; one read-noise draw per device when a
        generator is given. Conduction depends on the state only, so ``devices`` serves to
        check the shape."""
        state = torch.as_tensor(state)
        if state.shape != devices.shape:
            raise ConfigError(f"state has shape {tuple(state.shape)} but devices have "
                              f"{tuple(devices.shape)}")
        t = self._tensors(state.device)
        g = self._g(t, state.to(self.dtype))
        if generator is not None and self.read_noise_s > 0:
            g = g + self.read_noise_s * self._randn(g.shape, generator, g.device, self.dtype)
        return g

    def pulse(self, state: torch.Tensor, devices: Devices, *, polarity: int | torch.Tensor,
              amplitude_v: float | torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The state after ONE write pulse, no verify: ``polarity`` +1 SET (gate
        ``drive.v_gate_set_v``) or -1 RESET (gate ``drive.v_gate_reset_v``), of
        ``drive.t_write_s``, at ``amplitude_v`` (V, within the table's amplitude axis);
        each a number or a tensor broadcastable to ``state``. With a generator each device
        draws its ``kc``; without, ``kc = 1``. ``state`` is clipped into each device's window
        first."""
        state = torch.as_tensor(state)
        if state.shape != devices.shape:
            raise ConfigError(f"state has shape {tuple(state.shape)} but devices have "
                              f"{tuple(devices.shape)}")
        device, shape = state.device, state.shape
        amp = torch.as_tensor(amplitude_v, dtype=self.dtype, device=device)
        pol = torch.as_tensor(polarity, device=device)
        if not bool(((pol == 1) | (pol == -1)).all()):
            raise ConfigError(f"polarity = {polarity!r} must be +1 (SET) or -1 (RESET)")
        lo, hi = self._a0, self._a0 + (self._na - 1) * self._adx
        bad = ~((amp >= lo - 1e-6) & (amp <= hi + 1e-6))
        if bool(bad.any()):
            raise TableError(f"programming: amplitude = {float(amp[bad].flatten()[0]):g} V lies "
                             f"outside the calibrated range [{lo:g}, {hi:g}] V; the table is not "
                             "extrapolated: recalibrate with a wider sweep")
        t = self._tensors(device)
        d = self.hw.device
        wd = devices.wd.to(device=device, dtype=self.dtype)
        n = torch.minimum(torch.maximum(state.to(self.dtype), d.n_min * wd), d.n_max * wd)
        ln_k = torch.log(devices.kd.to(device=device, dtype=self.dtype))
        if generator is not None:
            ln_k = ln_k + d.c2c_sigma * self._randn(shape, generator, device, self.dtype)
        flat = [x.expand(shape).reshape(-1) for x in (n, wd, ln_k, amp, pol)]
        n, wd, ln_k, amp, pol = flat
        dn = self._dstate(t, pol > 0, amp.clamp(lo, hi), n / wd, ln_k)
        return torch.minimum(torch.maximum(n + dn, d.n_min * wd), d.n_max * wd).reshape(shape)

    # ---- the procedure ----------------------------------------------------------------------

    def program(self, targets_s: torch.Tensor, devices: Devices, *,
                state: torch.Tensor | None = None, generator: torch.Generator,
                read_noise: bool = True, max_rounds: int = 2, set_step_v: float = 0.05,
                reset_step_v: float = 0.1, max_pulses_per_phase: int = 60,
                max_floor_pulses: int = 20, tolerance_s: float | None = None
                ) -> ProgramResult:
        """Program every device towards its target read conductance (S) by write-and-verify.

        ``devices`` must have the targets' shape. Devices start at their floor
        (``floor_state``) unless ``state`` (1e26 m^-3, clipped into each device's window) is
        given. ``tolerance_s`` defaults to ``self.tolerance_s``. ``generator`` drives every
        draw (``kc`` per pulse, read noise), on its own device; the same seed gives the same
        result. Targets outside ``window_s`` are a ConfigError.
        """
        max_rounds = _whole("max_rounds", max_rounds, 1)
        max_phase = _whole("max_pulses_per_phase", max_pulses_per_phase, 1)
        max_floor = _whole("max_floor_pulses", max_floor_pulses, 0)
        set_step = _step("set_step_v", set_step_v, 5.0)
        reset_step = _step("reset_step_v", reset_step_v, 5.0)
        tol = self.tolerance_s if tolerance_s is None else _step(
            "tolerance_s", tolerance_s, self.window_s[1] - self.window_s[0])
        if not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator = {generator!r} must be a torch.Generator")
        if isinstance(targets_s, torch.Tensor):
            targets, device = targets_s, targets_s.device
        else:
            targets, device = torch.as_tensor(targets_s, dtype=self.dtype), self.device
        if not isinstance(devices, Devices):
            raise ConfigError(f"devices = {devices!r} must be Devices (see draw_devices)")
        if targets.shape != devices.shape:
            raise ConfigError(f"targets_s has shape {tuple(targets.shape)} but devices have "
                              f"{tuple(devices.shape)}: one device per target")
        if targets.numel() == 0:
            raise ConfigError("targets_s is empty")
        shape = targets.shape
        tgt = targets.to(device=device, dtype=self.dtype).reshape(-1)
        self._check_targets(tgt)
        kd = devices.kd.to(device=device, dtype=self.dtype).reshape(-1)
        wd = devices.wd.to(device=device, dtype=self.dtype).reshape(-1)
        d, drv = self.hw.device, self.hw.drive
        n_lo, n_hi = d.n_min * wd, d.n_max * wd
        if state is None:
            n = n_lo.clone()
        else:
            n0 = torch.as_tensor(state)
            if n0.shape != shape:
                raise ConfigError(f"state has shape {tuple(n0.shape)}, targets_s has "
                                  f"{tuple(shape)}")
            n = n0.to(device=device, dtype=self.dtype).reshape(-1)
            if not bool(torch.isfinite(n).all()):
                raise ConfigError("state must be finite")
            n = torch.minimum(torch.maximum(n, n_lo), n_hi)
        t = self._tensors(device)
        noise = self.read_noise_s if read_noise else 0.0
        count = tgt.numel()
        i32 = torch.int32

        # the working set: every device still being programmed (compacted as they finish)
        w: dict[str, torch.Tensor] = {
            "pos": torch.arange(count, device=device), "n": n, "lo": tgt - tol,
            "hi": tgt + tol, "n_lo": n_lo, "n_hi": n_hi, "wd": wd, "ln_kd": torch.log(kd),
            "phase": torch.full((count,), _DONE, dtype=torch.int8, device=device),
            "amp": torch.zeros(count, dtype=self.dtype, device=device),
            "rounds": torch.zeros(count, dtype=i32, device=device),
            "phase_pulses": torch.zeros(count, dtype=i32, device=device),
            "set": torch.zeros(count, dtype=i32, device=device),
            "reset": torch.zeros(count, dtype=i32, device=device),
            "floor": torch.zeros(count, dtype=i32, device=device),
        }
        w["g"] = self._verify(t, w["n"], noise, generator)
        floor_first = w["g"] > self.floor_s if max_floor > 0 else torch.zeros_like(tgt,
                                                                                  dtype=bool)
        w["phase"][floor_first] = _FLOOR
        self._start_round(w, ~floor_first, max_rounds, drv)

        out = {k: torch.empty_like(w[k]) for k in
               ("n", "g", "rounds", "set", "reset", "floor")}
        limit = max_floor + 2 * max_phase * max_rounds
        for _ in range(limit + 1):
            active = w["phase"] != _DONE
            n_active = int(active.sum())
            if n_active == 0:
                break
            if 2 * n_active <= active.numel():
                self._retire(w, out, ~active)
                w = {k: v[active] for k, v in w.items()}
            self._pulse(t, w, noise, generator, drv)
            self._advance(w, max_rounds, max_phase, max_floor, set_step, reset_step, drv)
        else:  # the caps bound every device's pulses by `limit`: this is never reached
            raise RuntimeError("write-and-verify did not finish within its pulse caps")
        self._retire(w, out, torch.ones_like(w["phase"], dtype=bool))
        g = out["g"]
        success = (g >= tgt - tol) & (g <= tgt + tol)
        total = out["set"] + out["reset"] + out["floor"]
        return ProgramResult(g_reached=g.reshape(shape), state=out["n"].reshape(shape),
                             pulses=total.reshape(shape), set_pulses=out["set"].reshape(shape),
                             reset_pulses=out["reset"].reshape(shape),
                             floor_pulses=out["floor"].reshape(shape),
                             rounds=out["rounds"].reshape(shape),
                             success=success.reshape(shape))

    # ---- internals ----------------------------------------------------------------------

    def _check_targets(self, tgt: torch.Tensor) -> None:
        lo, hi = self.window_s
        bad = ~((tgt >= lo * (1 - _WINDOW_SLACK)) & (tgt <= hi * (1 + _WINDOW_SLACK)))
        if bool(bad.any()):
            value = float(tgt[bad][0])
            if not math.isfinite(value):
                raise ConfigError("targets_s must be finite")
            raise ConfigError(
                f"target {value * 1e6:.6g} uS is outside the cell's read window "
                f"[{lo * 1e6:.6g}, {hi * 1e6:.6g}] uS (1T1R read at {self.hw.drive.v_read_v:g} V "
                f"of the nominal device between device.n_min and n_max)")

    @staticmethod
    def _randn(shape: Sequence[int], generator: torch.Generator, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        z = torch.randn(tuple(shape), generator=generator, device=generator.device,
                        dtype=dtype)
        return z.to(device)

    def _g(self, t: dict[str, torch.Tensor], n: torch.Tensor) -> torch.Tensor:
        """Read conductance at state ``n``: linear on the resampled spline, continued
        linearly past the ends."""
        x = (n - self._g0) / self._gdx
        i = x.floor().clamp(0, t["g"].numel() - 2)
        f = x - i
        i = i.long()
        g0 = t["g"][i]
        return g0 + f * (t["g"][i + 1] - g0)

    def _verify(self, t: dict[str, torch.Tensor], n: torch.Tensor, noise: float,
                generator: torch.Generator) -> torch.Tensor:
        g = self._g(t, n)
        if noise > 0:
            g = g + noise * self._randn(g.shape, generator, g.device, self.dtype)
        return g

    def _dstate(self, t: dict[str, torch.Tensor], is_set: torch.Tensor, amp: torch.Tensor,
                u: torch.Tensor, ln_k: torch.Tensor) -> torch.Tensor:
        """Signed change of state of one pulse (module docstring)."""
        d = self.hw.device
        x = (amp - self._a0) * (1.0 / self._adx)
        ia = x.floor().clamp_(0, self._na - 2)
        fa = (x - ia).clamp_(0, 1).unsqueeze(-1)
        if self._state_uniform:
            y = (u - self._s0) * (1.0 / self._sdx)
            js = y.floor().clamp_(0, self._ns - 2)
            fs = (y - js).clamp_(0, 1)
        else:
            states = t["states"]
            js = (torch.searchsorted(states, u.contiguous(), right=True) - 1).clamp_(
                0, self._ns - 2)
            fs = ((u - states[js]) / (states[js + 1] - states[js])).clamp_(0, 1)
            js = js.to(u.dtype)
        fs = fs.unsqueeze(-1)
        row = ((is_set.to(u.dtype) * (self._na - 1) + ia) * (self._ns - 1) + js).long()
        c = t["coef"].index_select(0, row)
        db = c[:, 0:2] + fa * (c[:, 2:4] + fs * c[:, 6:8]) + fs * c[:, 4:6]
        window = torch.where(is_set, 1 - (u * (1.0 / d.n_max)) ** d.p_window_set,
                             1 - (d.n_min / u) ** d.p_window_reset).clamp_min(0)
        mag = window * torch.exp(db[:, 0] + db[:, 1] * ln_k)
        return torch.where(is_set, mag, -mag)

    def _pulse(self, t: dict[str, torch.Tensor], w: dict[str, torch.Tensor], noise: float,
               generator: torch.Generator, drv: Any) -> None:
        """One pulse and a verify read for every device of the working set not done."""
        phase = w["phase"]
        active = phase != _DONE
        is_set = phase == _SET
        amp = torch.where(phase == _FLOOR, torch.full_like(w["amp"], drv.v_reset_max_v),
                          w["amp"])
        ln_kc = self.hw.device.c2c_sigma * self._randn(amp.shape, generator, amp.device,
                                                       self.dtype)
        n = w["n"]
        dn = self._dstate(t, is_set, amp, n / w["wd"], w["ln_kd"] + ln_kc)
        n_new = torch.minimum(torch.maximum(n + dn, w["n_lo"]), w["n_hi"])
        w["n"] = torch.where(active, n_new, n)
        w["g"] = torch.where(active, self._verify(t, w["n"], noise, generator), w["g"])

    @staticmethod
    def _start_round(w: dict[str, torch.Tensor], mask: torch.Tensor, max_rounds: int,
                     drv: Any) -> None:
        g, lo, hi = w["g"], w["lo"], w["hi"]
        finished = mask & (((g >= lo) & (g <= hi)) | (w["rounds"] >= max_rounds))
        go = mask & ~finished
        up = go & (g < lo)
        down = go & ~(g < lo)
        w["rounds"] = w["rounds"] + go.to(w["rounds"].dtype)
        w["phase_pulses"] = torch.where(go, torch.zeros_like(w["phase_pulses"]),
                                        w["phase_pulses"])
        phase = torch.where(finished, _DONE, w["phase"])
        phase = torch.where(up, _SET, phase)
        w["phase"] = torch.where(down, _RESET, phase).to(torch.int8)
        amp = torch.where(up, drv.v_set_min_v, w["amp"])
        w["amp"] = torch.where(down, drv.v_reset_min_v, amp)

    def _advance(self, w: dict[str, torch.Tensor], max_rounds: int, max_phase: int,
                 max_floor: int, set_step: float, reset_step: float, drv: Any) -> None:
        """The controller's decision after a verify read (circuitsim.write_verify)."""
        phase, g, lo, hi = w["phase"], w["g"], w["lo"], w["hi"]
        in_floor, in_set, in_reset = phase == _FLOOR, phase == _SET, phase == _RESET
        i32 = w["set"].dtype
        w["floor"] = w["floor"] + in_floor.to(i32)
        w["set"] = w["set"] + in_set.to(i32)
        w["reset"] = w["reset"] + in_reset.to(i32)
        pp = w["phase_pulses"] + (in_set | in_reset).to(i32)
        floor_end = in_floor & ((g <= self.floor_s) | (w["floor"] >= max_floor))
        reached = in_set & (g >= lo)
        overshoot = reached & (g > hi)
        capped = pp >= max_phase
        set_end = in_set & ~reached & capped
        set_more = in_set & ~reached & ~capped
        reset_end = in_reset & ((g <= hi) | capped)
        reset_more = in_reset & ~reset_end
        amp = w["amp"]
        amp = torch.where(set_more, (amp + set_step).clamp_max(drv.v_set_max_v), amp)
        amp = torch.where(reset_more, (amp + reset_step).clamp_max(drv.v_reset_max_v), amp)
        w["amp"] = torch.where(overshoot, drv.v_reset_min_v, amp)
        w["phase_pulses"] = torch.where(overshoot, torch.zeros_like(pp), pp)
        phase = torch.where(reached & ~overshoot, _DONE, phase)
        w["phase"] = torch.where(overshoot, _RESET, phase).to(torch.int8)
        self._start_round(w, floor_end | set_end | reset_end, max_rounds, drv)

    @staticmethod
    def _retire(w: dict[str, torch.Tensor], out: dict[str, torch.Tensor],
                rows: torch.Tensor) -> None:
        """Copy the results of the working set's ``rows`` to their places in ``out``."""
        pos = w["pos"][rows]
        for key, dest in out.items():
            dest[pos] = w[key][rows]
