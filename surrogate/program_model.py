"""Write-and-verify in torch: the paper's programming procedure driven by calibrated pulses.

:class:`ProgrammingModel` runs the write-and-verify controller that
:func:`circuitsim.write_verify.write_verify` runs against ngspice
(:class:`circuitsim.write_policy.WritePolicy`: floor phase, rounds of adaptive SET and
adaptive RESET, the same limits and counters) on tensors of devices of any shape, with the
effect of each pulse taken from the calibration table instead of an ngspice transient. The
only loop is over pulse steps; it ends as soon as every device is done. Everything is
float32 by default and runs on the device of the targets (CPU or CUDA).

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
``window_s`` is the table's (``Table.read_window``); the levels (``hw.levels``: their count
and window ``level_window_s`` inside it), the tolerance and the floor level (the write
policy's thresholds) follow from it.

Read noise: each verify read adds a normal draw of standard deviation ``verify_noise_s``
when ``read_noise=True`` (the default): one read's noise ``read_noise_s``
(``SurrogateConfig.read_noise`` in its unit) over the square root of the reads a verify
averages (``SurrogateConfig.verify_reads``, at least one); ngspice's reads, and the
table's own ``write_verify`` surface, are noise-free, so comparisons against them switch it
off. ``ProgramResult.g_reached`` is, as in
``write_verify``, the last *verify read* and ``success`` is judged on it (noisy when read
noise is on); the conductance a device actually has is ``model.read(result.state,
devices)``.

Measured against ngspice
------------------------
The ``chip`` calibration (``chip-78fa9db6a2bfd117``; its ``write_verify`` surface is 32
targets x 8 cells, every step solved in ngspice) against the surrogate on the same 32
targets x 4096 devices, read noise off (1 level = 0.292 uS, tolerance 0.5 level):

==============================  ======================  ======================
                                ngspice (256 cells)     surrogate
==============================  ======================  ======================
success rate                    0.992                   0.987
mean write pulses (SET, RESET)  48.6 (28.1, 20.5)       48.5 (28.7, 19.7)
error mean                      0.251 level             0.237 level
program error std               0.129 uS (0.442 level)  0.145 uS (0.495 level)
  of the successful cells       0.278 level             0.272 level
error rms                       0.148 uS (0.508 level)  0.160 uS (0.549 level)
==============================  ======================  ======================

(The larger overall spread of the surrogate comes from the failures: devices with
``wd < 1`` that cannot reach the two top targets, 1.3 % against ngspice's 2 of 256.)
Replaying 24 ngspice cells' own pulse sequences (8 targets over the window, 45 pulses a
cell on average, each cell's ``kd``, ``wd`` and per-pulse ``kc``) through
:meth:`ProgrammingModel.pulse` ends within 0.66 level rms (1.8 worst) of ngspice's final
conductance on the chip table, 3.9 rms (6.7 worst) on the ``tiny`` one.

Programming 64 x 64 x 16 devices from their floor to random levels with the default read
noise (``SurrogateConfig.read_noise = 0.02`` of the window, i.e. 2.5 levels, 5x the
tolerance), a verify read passes by chance: 75 % of the devices end with a read within tolerance after 39 pulses on
average, but only 11 % actually are, and the conductance error is 2.8 levels rms (0.54
without noise).

Speed
-----
Each device's draws are its own: pulse ``k`` of device ``i`` takes the two counter-based
normals (:mod:`surrogate.normals`) of counter ``i * stride + k`` under a key drawn from
the generator, one for its ``kc`` and one for the verify read after it. So on the CPU the
pulse loop runs device by device in one compiled pass (``_pulse_loop``, numba, on all
cores; on one core for fewer than ``_PARALLEL_DEVICES``), where a pulse costs its
arithmetic. On CUDA, and as the compiled pass's reference, it runs as torch operations
over the working set, where a pulse step costs some 50 small tensor operations however
many devices it moves (the controller is a table lookup, and without read noise a verify
read is judged on the state against precomputed thresholds, the conductance read once at
the end: see ``ProgrammingModel._run``). Both give the step-by-step controller's results
bit for bit: the same draws, the same arithmetic in the same order, and the exponential
evaluated by the same series in both (:mod:`surrogate.series`: a library's ``exp``
differs from torch's in the last bit). What each costs: ``benchmarks/bench_program.py``,
figures in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload
from scipy.interpolate import CubicSpline, PchipInterpolator

from circuitsim.write_policy import Outcome, Phase, Ramp, WritePolicy
from netlists.config import HardwareConfig, SurrogateConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError, TableError
from surrogate.normals import _G, _MASK64, _U, key_for, mix, normals_torch, uniform_pair_normals
from surrogate.series import exp64, exp_torch

__all__ = ["Devices", "ProgramResult", "ProgrammingModel"]

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
#: Outcomes of a verify read per controller code (see _Controller): 3 orders x 4 regions.
_OUTCOMES = 12
#: The policy's outcome (its column in WritePolicy.table) of each of them; the floor level
#: is at place ``order`` among the sorted thresholds, the band's ends at the other two, and
#: the read reaches the first ``region`` of them.
_POLICY_OUTCOME = np.array([
    Outcome(band=-1 if region <= (0 if order > 0 else 1) else
            1 if region > (2 if order < 2 else 1) else 0,
            above_floor=region > order).index
    for order in range(3) for region in range(4)])
#: Pulse steps x devices of controller rows kept before they are counted.
_HISTORY = 1 << 18
#: Controllers (one per policy and device) a model keeps.
_CONTROLLERS_KEPT = 8
#: Most ulps by which _state_at corrects the inverse of the read interpolation.
_ULP_STEPS = 256
#: Whether the pulse loop runs compiled on the CPU (the torch loop is its reference).
_COMPILED = True
#: Fewest devices whose compiled pulse loop, and states whose compiled read, run on all
#: cores (fewer: on one, which costs less than waking the threads).
_PARALLEL_DEVICES = 256
_PARALLEL_STATES = 16384
#: Stream number of write-and-verify's draws under their key (surrogate.normals.key_for).
_PROGRAM_STREAM = 0x5752495445          # "WRITE"


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


@dataclass(frozen=True)
class _Controller:
    """A write policy's controller as lookup tables, with its thresholds.

    A device's *code* is the policy's (:mod:`circuitsim.write_policy`). A verify read's
    *outcome* here is where it lies among the device's three thresholds, sorted: the ends of
    its tolerance band and the floor level. It is ``4 * order + region``: ``order`` is the
    floor level's place among the three, ``region`` the count of them the read reaches
    (``_POLICY_OUTCOME`` says which of the policy's outcomes each is). The tables have a
    row per code and outcome, ``code * _OUTCOMES + outcome``; a device keeps ``code *
    _OUTCOMES + 4 * order``, so that adding the region gives its row.

    ``pulse``: per row, its code's pulse: [first row of its amplitude cell in the (D, B)
    table as a float (the state cell is added), amplitude weight, sign (+1 SET, -1 RESET,
    0 for START and DONE), 1.0 for SET else 0.0]. ``following``: per row, what the device
    keeps next. ``counts``: per row, what the floor, SET and RESET pulse counters and the
    round counter gain, packed into an int64 at the bit offsets ``shifts`` (each field wide
    enough for its cap). ``start``, ``done``: START and DONE times ``_OUTCOMES``.
    ``tolerance``, ``floor``: the policy's thresholds on the model's read window (S), the
    floor as a tensor; ``limit``: the most pulses a device can receive."""

    pulse: torch.Tensor
    following: torch.Tensor
    counts: torch.Tensor
    shifts: tuple[int, int, int, int]
    start: int
    done: int
    tolerance: float
    floor: torch.Tensor
    limit: int

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """The counters [floor, set, reset, rounds] (int32, [4, n]) of packed ones."""
        ends = (*self.shifts[1:], 63)
        return torch.stack([(packed >> lo) & ((1 << (hi - lo)) - 1)
                            for lo, hi in zip(self.shifts, ends)]).to(torch.int32)


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
    return device_model(hw).window_factor(polarity, u)


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


@numba.njit(inline="always", cache=True, error_model="numpy")
def _conductance_of(state, g0, gdx, last, g_cell):  # noqa: ANN001, ANN202 - numba kernel
    """``ProgrammingModel._g`` of one state: its cell on the conductance nodes (the last
    one ``last``) and its linear interpolation, in the dtype of ``state`` (``g0``, ``gdx``
    and ``last`` in it too) and in the torch path's order of operations."""
    zero = last - last
    x = (state - g0) / gdx
    i = np.floor(x)
    i = zero if i < zero else (last if i > last else i)
    j = int(i)
    return (x - i) * g_cell[j, 1] + g_cell[j, 0]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _conductance(n, g0, gdx, last, g_cell, out):  # noqa: ANN001 - numba kernel
    """``_conductance_of`` every state, on all cores."""
    for k in numba.prange(n.size):
        out[k] = _conductance_of(n[k], g0, gdx, last, g_cell)


@numba.njit(cache=True, error_model="numpy")
def _conductance_serial(n, g0, gdx, last, g_cell, out):  # noqa: ANN001 - numba kernel
    """``_conductance_of`` every state, on one core."""
    for k in range(n.size):
        out[k] = _conductance_of(n[k], g0, gdx, last, g_cell)


class ProgrammingModel:
    """Write-and-verify of many devices at once on a calibrated pulse response (module
    docstring). Build it with :meth:`from_table`."""

    def __init__(self, hw: HardwareConfig, *, g_state: np.ndarray, g_values: np.ndarray,
                 amplitudes: np.ndarray, states: np.ndarray, log_response: np.ndarray,
                 elasticity: np.ndarray, window_s: tuple[float, float] | None = None,
                 config: SurrogateConfig | None = None, device: Any = None,
                 dtype: torch.dtype = torch.float32) -> None:
        """Low-level constructor (use :meth:`from_table`). ``g_state``/``g_values``: the read
        conductance on a uniform state grid. ``amplitudes``: uniform grid, V.
        ``log_response``, ``elasticity``: ``D`` and ``B`` as [polarity (0 RESET, 1 SET),
        amplitude, state]. ``window_s``: the cell's read window (default: the read curve at
        ``n_min`` and ``n_max``). ``config``: read and verify noise (default
        ``SurrogateConfig()``)."""
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype = {dtype} must be a floating-point type")
        self.hw = hw
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        d = hw.device
        if window_s is None:
            window_s = tuple(np.interp([d.n_min, d.n_max], g_state, g_values))
        self.config = SurrogateConfig() if config is None else config
        if not isinstance(self.config, SurrogateConfig):
            raise ConfigError(f"config = {config!r} must be a SurrogateConfig")
        #: the cell's read window, S
        self.window_s: tuple[float, float] = (float(window_s[0]), float(window_s[1]))
        #: the levels' window (``hw.levels`` inside the cell's), S, and its level grid
        self.level_window_s = hw.levels.window(self.window_s)
        self.levels: int = hw.levels.count
        self.level_spacing_s = hw.levels.spacing(self.window_s)
        #: the write-and-verify controller ``program`` runs unless given another
        self.policy = WritePolicy.of(hw)
        #: its verify tolerance and floor level, S
        self.tolerance_s, self.floor_s = self.policy.thresholds(self.window_s)
        #: one read's noise, S; a verify read's (the mean of ``verify_reads`` reads)
        self.read_noise_s: float = self.config.read_noise_s(self.level_window_s, self.levels)
        self.verify_noise_s: float = self.read_noise_s / math.sqrt(
            max(self.config.verify_reads, 1))
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
        self._g_cells = len(g_values) - 1
        self._controllers: dict[tuple, _Controller] = {}
        self._tensors(self.device)

    # ---- construction from a calibration ------------------------------------------------

    @classmethod
    def from_table(cls, table: Any, *, config: SurrogateConfig | None = None,
                   device: Any = None, dtype: torch.dtype = torch.float32
                   ) -> ProgrammingModel:
        """The model of ``table`` (a :class:`calibration.store.Table`): its hardware, its
        ``cell_read`` and ``programming`` surfaces, its read window; read and verify noise
        from ``config``. TableError when one is missing or does
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
                   log_response=resp, elasticity=elas, window_s=table.read_window(),
                   config=config, device=device, dtype=dtype)

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
            g = found["g"]
            found["g_cell"] = torch.stack([g[:-1], g[1:] - g[:-1]], dim=1)
            d = self.hw.device
            # the scalar operands of the pulse loop as tensors, cheaper than Python numbers
            # and, on the CPU, taken by a kernel as it takes a number: the same results
            for key, value in (("s0", self._s0), ("s_scale", 1.0 / self._sdx),
                               ("inv_n_max", 1.0 / d.n_max),
                               ("n_min", d.n_min), ("one", 1.0), ("c2c", d.c2c_sigma),
                               ("noise", self.verify_noise_s)):
                found[key] = torch.tensor(value, dtype=self.dtype)
            found["inf"] = torch.tensor(math.inf, dtype=self.dtype, device=device)
            self._cache[device] = found
        return found

    def to(self, device: Any) -> ProgrammingModel:
        """Make ``device`` the default device (tables are cached per device)."""
        self.device = torch.device(device)
        self._tensors(self.device)
        return self

    # ---- public helpers -------------------------------------------------------------------

    def level_conductances(self) -> torch.Tensor:
        """The ``levels`` conductances spread evenly over ``level_window_s``, S."""
        return torch.linspace(self.level_window_s[0], self.level_window_s[1], self.levels,
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
        g = self._g(t, state.to(self.dtype).reshape(-1)).reshape(state.shape)
        if generator is not None and self.read_noise_s > 0:
            g = g + self.read_noise_s * self._randn(g.shape, generator, g.device, self.dtype)
        return g

    def pulse(self, state: torch.Tensor, devices: Devices, *, polarity: int | torch.Tensor,
              amplitude_v: float | torch.Tensor,
              generator: torch.Generator | None = None,
              kc_normals: torch.Tensor | None = None) -> torch.Tensor:
        """The state after ONE write pulse, no verify: ``polarity`` +1 SET (gate
        ``drive.v_gate_set_v``) or -1 RESET (gate ``drive.v_gate_reset_v``), of
        ``drive.t_write_s``, at ``amplitude_v`` (V, within the table's amplitude axis);
        each a number or a tensor broadcastable to ``state``. With a generator each device
        draws its ``kc = exp(c2c_sigma z)``; ``kc_normals`` gives the ``z`` instead (the
        state's shape); with neither, ``kc = 1``. ``state`` is clipped into each device's
        window first."""
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
        if generator is not None and kc_normals is not None:
            raise ConfigError("give a generator or kc_normals, not both")
        if kc_normals is not None:
            z = torch.as_tensor(kc_normals)
            if z.shape != shape:
                raise ConfigError(f"kc_normals has shape {tuple(z.shape)} but state has "
                                  f"{tuple(shape)}")
            ln_k = ln_k + d.c2c_sigma * z.to(device=device, dtype=self.dtype)
        elif generator is not None:
            ln_k = ln_k + d.c2c_sigma * self._randn(shape, generator, device, self.dtype)
        flat = [x.expand(shape).reshape(-1) for x in (n, wd, ln_k, amp, pol)]
        n, wd, ln_k, amp, pol = flat
        dn = self._dstate(t, pol > 0, amp.clamp(lo, hi), n / wd, ln_k)
        return torch.minimum(torch.maximum(n + dn, d.n_min * wd), d.n_max * wd).reshape(shape)

    # ---- the procedure ----------------------------------------------------------------------

    def program(self, targets_s: torch.Tensor, devices: Devices, *,
                state: torch.Tensor | None = None, generator: torch.Generator,
                read_noise: bool = True, policy: WritePolicy | None = None
                ) -> ProgramResult:
        """Program every device towards its target read conductance (S) by write-and-verify.

        ``devices`` must have the targets' shape. Devices start at their floor
        (``floor_state``) unless ``state`` (1e26 m^-3, clipped into each device's window) is
        given. ``policy`` (default ``self.policy``, the hardware's) decides the pulses and
        when a device is done; its thresholds are taken on ``window_s``. ``generator``
        drives every draw (``kc`` per pulse, read noise), on its own device; the same seed
        gives the same result. Targets outside ``window_s`` are a ConfigError.
        """
        policy = self.policy if policy is None else policy
        if not isinstance(policy, WritePolicy):
            raise ConfigError(f"policy = {policy!r} must be a WritePolicy")
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
        d = self.hw.device
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
        ctl = self._controller(device, policy)
        with torch.inference_mode():
            n, g, counts = self._run(t, ctl, tgt, kd, wd, n, n_lo, n_hi, generator,
                                     read_noise=read_noise)
        n, g, counts = n.clone(), g.clone(), counts.clone()
        tol = ctl.tolerance
        success = (g >= tgt - tol) & (g <= tgt + tol)
        floor, sets, resets, rounds = counts.unbind(0)
        total = sets + resets + floor
        return ProgramResult(g_reached=g.reshape(shape), state=n.reshape(shape),
                             pulses=total.reshape(shape), set_pulses=sets.reshape(shape),
                             reset_pulses=resets.reshape(shape),
                             floor_pulses=floor.reshape(shape), rounds=rounds.reshape(shape),
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
        linearly past the ends (on the CPU in one compiled pass, the same numbers)."""
        if n.device.type == "cpu" and n.dtype == self.dtype and n.dim() == 1:
            out = torch.empty_like(n)
            kind = n.numpy().dtype.type
            kernel = _conductance if n.numel() >= _PARALLEL_STATES else _conductance_serial
            kernel(n.contiguous().numpy(), kind(self._g0), kind(self._gdx),
                   kind(self._g_cells - 1), t["g_cell"].numpy(), out.numpy())
            return out
        return self._g_torch(t, n)

    def _g_torch(self, t: dict[str, torch.Tensor], n: torch.Tensor) -> torch.Tensor:
        """:meth:`_g` in torch (any device; the compiled pass's reference)."""
        # g_k + (x - k) * (g_(k+1) - g_k); here and below, in-place operations on
        # temporaries save allocations and compute the same numbers
        # by a Python number, which CUDA divides by as a multiplication by its reciprocal:
        # the numbers of the step-by-step loop
        x = (n - self._g0) / self._gdx
        i = x.floor().clamp_(0, self._g_cells - 1)
        node = t["g_cell"].index_select(0, i.long())  # g at the lower node, step to the next
        return x.sub_(i).mul_(node[:, 1]).add_(node[:, 0])

    def _cell(self, t: dict[str, torch.Tensor], u: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower node (as a float) and weight of each ``u`` on the state axis."""
        if self._state_uniform:
            y = (u - t["s0"]).mul_(t["s_scale"])
            js = y.floor().clamp_(0, self._ns - 2)
            return js, y.sub_(js).clamp_(0, 1)
        states = t["states"]
        js = (torch.searchsorted(states, u.contiguous(), right=True) - 1).clamp_(
            0, self._ns - 2)
        fs = ((u - states[js]) / (states[js + 1] - states[js])).clamp_(0, 1)
        return js.to(u.dtype), fs

    def _window(self, t: dict[str, torch.Tensor], is_set: torch.Tensor, u: torch.Tensor
                ) -> torch.Tensor:
        """The window factor ``w(u)`` of SET where ``is_set`` (1.0) and of RESET where not
        (0.0)."""
        d = self.hw.device
        # n_min / u: torch computes a number over a tensor as reciprocal times the number
        top, bottom = u * t["inv_n_max"], torch.reciprocal(u).mul_(t["n_min"])
        # x ** 2 is x * x and x ** 1 is x in torch too: the same numbers, fewer kernels
        for_set = top.mul_(top) if d.p_window_set == 2 else top.pow_(d.p_window_set)
        for_reset = bottom if d.p_window_reset == 1 else bottom.pow_(d.p_window_reset)
        # lerp with a weight of exactly 0 or 1 returns either end exactly (a cheap where)
        w = for_reset.lerp_(for_set, is_set)
        return torch.sub(t["one"], w, out=w).clamp_min_(0)

    def _dstate(self, t: dict[str, torch.Tensor], is_set: torch.Tensor, amp: torch.Tensor,
                u: torch.Tensor, ln_k: torch.Tensor) -> torch.Tensor:
        """Signed change of state of one pulse (module docstring)."""
        x = (amp - self._a0) * (1.0 / self._adx)
        ia = x.floor().clamp_(0, self._na - 2)
        fa = (x - ia).clamp_(0, 1).unsqueeze(-1)
        js, fs = self._cell(t, u)
        row = ((is_set.to(u.dtype) * (self._na - 1) + ia) * (self._ns - 1) + js).long()
        mag = self._magnitude(t, row, fa, fs, is_set.to(u.dtype), u, ln_k)
        return torch.where(is_set, mag, -mag)

    def _magnitude(self, t: dict[str, torch.Tensor], row: torch.Tensor, fa: torch.Tensor,
                   fs: torch.Tensor, is_set: torch.Tensor, u: torch.Tensor,
                   ln_k: torch.Tensor) -> torch.Tensor:
        """``|dN|`` from the bilinear cell ``row`` of the (D, B) table at amplitude weight
        ``fa`` ([n, 1]) and state weight ``fs``; ``is_set`` is 1.0 for SET, 0.0 for RESET."""
        c = t["coef"].index_select(0, row)
        fs = fs.unsqueeze(-1)
        # c01 + fa (c23 + fs c67) + fs c45, then exp(D + B ln k)
        db = (fs * c[:, 6:8]).add_(c[:, 2:4]).mul_(fa).add_(c[:, 0:2]).add_(fs * c[:, 4:6])
        rate = exp_torch((db[:, 1] * ln_k).add_(db[:, 0])).to(u.dtype)
        return rate.mul_(self._window(t, is_set, u))

    def _controller(self, device: torch.device, policy: WritePolicy) -> _Controller:
        """``policy`` as tables on ``device`` (cached per device and policy)."""
        key = (device, policy)
        found = self._controllers.get(key)
        if found is not None:
            return found
        dtype = self.dtype

        def amplitudes(ramp: Ramp) -> torch.Tensor:
            # the ramp's own sums, in the model's dtype: amp = min(amp + step, top)
            amp = [torch.tensor([ramp.first_v], dtype=dtype)]
            for _ in range(ramp.length - 1):
                amp.append((amp[-1] + ramp.step_v).clamp_max(ramp.top_v))
            return torch.cat(amp)

        # the pulse of each code (START and DONE: none, at a harmless amplitude)
        phases = torch.as_tensor(policy.phases)
        amp = torch.full((policy.codes,), self.hw.drive.v_reset_min_v, dtype=dtype)
        amp[phases == Phase.FLOOR] = policy.floor_v
        for phase, values in ((Phase.SET, amplitudes(policy.set_ramp)),
                              (Phase.RESET, amplitudes(policy.reset_ramp))):
            amp[phases == phase] = values.repeat(policy.max_rounds)
        is_set = (phases == Phase.SET).to(dtype)
        sign = torch.where(phases < Phase.START, 2 * is_set - 1, torch.zeros_like(is_set))
        x = (amp - self._a0) * (1.0 / self._adx)
        ia = x.floor().clamp_(0, self._na - 2)
        fa = (x - ia).clamp_(0, 1)
        base = (is_set * (self._na - 1) + ia) * (self._ns - 1)
        pulse = torch.stack([base, fa, sign, is_set], dim=1)

        # the policy's decision after each code's verify read, for every outcome here
        following, new_round = (a[:, _POLICY_OUTCOME] for a in policy.table)
        order = np.arange(_OUTCOMES)[None, :] // 4
        following = (following * _OUTCOMES + 4 * order).reshape(-1)
        caps = (policy.max_floor_pulses, policy.max_pulses_per_phase * policy.max_rounds,
                policy.max_pulses_per_phase * policy.max_rounds, policy.max_rounds)
        shifts = tuple(int(v) for v in np.cumsum([0] + [max(c, 1).bit_length()
                                                         for c in caps[:-1]]))
        field = np.array([1 << k for k in shifts[:3]] + [0, 0], dtype=np.int64)
        counts = field[policy.phases][:, None] + (new_round.astype(np.int64) << shifts[3])
        tolerance, floor = policy.thresholds(self.window_s)
        found = _Controller(
            pulse=pulse.repeat_interleave(_OUTCOMES, dim=0).to(device),
            following=torch.as_tensor(following, device=device),
            counts=torch.as_tensor(counts.reshape(-1), device=device), shifts=shifts,
            start=policy.start * _OUTCOMES, done=policy.done * _OUTCOMES,
            tolerance=tolerance, floor=torch.tensor(floor, dtype=dtype, device=device),
            limit=policy.max_pulses)
        if len(self._controllers) >= _CONTROLLERS_KEPT:
            self._controllers.pop(next(iter(self._controllers)))
        self._controllers[key] = found
        return found

    def _inverse(self, t: dict[str, torch.Tensor], level: torch.Tensor) -> torch.Tensor:
        """The state at which the read interpolation ``_g`` equals ``level`` (S), continued
        linearly beyond the grid's ends."""
        g = t["g"].double()
        k = (torch.searchsorted(g, level.double()) - 1).clamp_(0, self._g_cells - 1)
        f = (level.double() - g[k]) / (g[k + 1] - g[k])
        return (self._g0 + (k + f) * self._gdx).to(self.dtype)

    def state_for(self, g: torch.Tensor) -> torch.Tensor:
        """The state (1e26 m^-3) whose read conductance :meth:`read` gives as ``g`` (S): the
        inverse of the monotonic read curve (within rounding)."""
        g = torch.as_tensor(g)
        return self._inverse(self._tensors(g.device), g)

    def _state_at(self, t: dict[str, torch.Tensor], level: torch.Tensor, low: torch.Tensor,
                  high: torch.Tensor) -> torch.Tensor:
        """For each ``level`` (S) the lowest state ``s`` in ``[low, next float above high]``
        (1-D, 1e26 m^-3) such that for every state ``n`` in ``[low, high]``, ``_g(n) >=
        level`` exactly when ``n >= s``.

        ``_g`` never falls as the state rises, in floating point too: within a cell
        ``g_k + f (g_(k+1) - g_k)`` rounds monotonically in ``f`` and cannot pass
        ``g_(k+1)``. So the inverse of the interpolation, moved by whole ulps until it is
        the lowest such number, decides a verify read as the read itself does."""
        top = torch.nextafter(high, t["inf"])
        n = torch.clamp(self._inverse(t, level), low, top)
        # the inverse errs by the rounding of g alone: 8 ulps at most on the chip and tiny
        # tables, float32 and float64
        for _ in range(_ULP_STEPS):
            short = (self._g(t, n) < level) & (n < top)
            if not bool(short.any()):
                break
            n = torch.where(short, torch.nextafter(n, t["inf"]), n)
        else:
            raise RuntimeError("_state_at: the inverse of the read interpolation is off by "
                               f"more than {_ULP_STEPS} ulps")
        for _ in range(_ULP_STEPS):
            lower = torch.nextafter(n, -t["inf"])
            reaches = (self._g(t, lower) >= level) & (n > low)
            if not bool(reaches.any()):
                return n
            n = torch.where(reaches, lower, n)
        raise RuntimeError(f"_state_at: the inverse of the read interpolation is off by more "
                           f"than {_ULP_STEPS} ulps")

    def _run(self, t: dict[str, torch.Tensor], ctl: _Controller, tgt: torch.Tensor,
             kd: torch.Tensor, wd: torch.Tensor, n: torch.Tensor, n_lo: torch.Tensor,
             n_hi: torch.Tensor, generator: torch.Generator, *,
             read_noise: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pulse loop of :meth:`program`: the final state and verify read of every
        device and its counters (floor, SET, RESET pulses, rounds) as an int32 [4, count].

        The draws are counter-based (:mod:`surrogate.normals`, the key drawn from
        ``generator``): pulse ``k`` (from 1) of device ``i`` takes the two normals of counter
        ``i * stride + k``, the first for its ``kc``, the second for the verify read after
        it; counter ``i * stride`` gives the first verify read's. So a device's pulses do
        not depend on the others', and on the CPU the loop runs device by device in one
        compiled pass (``_pulse_loop``) that gives the torch loop's results bit for bit.

        The torch loop (CUDA, and the reference) costs some 50 small tensor operations a
        step whatever the number of devices, so it keeps them few: the controller is a
        table lookup (:class:`_Controller`) whose rows are counted only every so often; a
        device that is done stays in the working set as a pulse of sign 0 until at most
        half of the set is active; the scalars are tensors. Both loops judge a verify read
        without noise on the state, against the lowest state at which the read reaches
        each threshold (:meth:`_state_at`), and read it once at the end. The results are
        those of the step-by-step controller (same draws, same arithmetic, same
        decisions), bit for bit."""
        device, dtype = tgt.device, self.dtype
        count = tgt.numel()
        noisy = read_noise and self.read_noise_s > 0
        key = _stream_key(generator)
        stride = ctl.limit + 2

        def draws(pos: torch.Tensor, pulse: int) -> tuple[torch.Tensor, torch.Tensor]:
            z = normals_torch(key, pos * stride + pulse).to(dtype)
            return z[0], z[1]

        def verify(n: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self._g(t, n) + t["noise"] * z

        def decide() -> torch.Tensor:
            """Each device's row in the controller's tables; the devices move on."""
            row = torch.searchsorted(bounds, read.unsqueeze(1), right=True).view(-1)
            row.add_(code)
            rows.append(row)
            return ctl.following.index_select(0, row)

        def tally() -> None:
            if rows:
                gained = ctl.counts.index_select(0, torch.cat(rows))
                counts.add_(gained.view(len(rows), -1).sum(0))
                rows.clear()

        # the working set: devices still being programmed (compacted as they finish); per
        # device the fixed rows n_lo, n_hi, wd, ln kd; the lowest verify reads (or, without
        # noise, states) that reach the band, pass it and pass the floor level, sorted; the
        # counters (packed) and the controller rows not yet counted
        fixed = torch.stack([n_lo, n_hi, wd, torch.log(kd)])
        tol = ctl.tolerance
        levels = torch.stack([tgt - tol, torch.nextafter(tgt + tol, t["inf"]),
                              torch.nextafter(ctl.floor, t["inf"]).expand(count)], dim=1)
        pos = torch.arange(count, device=device)
        if noisy:
            bounds, read = levels, verify(n, draws(pos, 0)[1])
        else:
            bounds = self._state_at(t, levels.reshape(-1), n_lo.repeat_interleave(3),
                                    n_hi.repeat_interleave(3)).view(count, 3)
            read = n
        order = (bounds[:, 0] <= bounds[:, 2]).long() + (bounds[:, 1] <= bounds[:, 2]).long()
        bounds = bounds.sort(dim=1, stable=True).values
        if device.type == "cpu" and self._compiled:
            return self._run_compiled(t, ctl, key, stride, fixed, bounds, order, n, read,
                                      noisy=noisy)
        counts = torch.zeros(count, dtype=torch.int64, device=device)  # packed
        rows: list[torch.Tensor] = []
        code = ctl.start + 4 * order
        code = decide()

        out_n, out_read, out_counts = torch.empty_like(n), torch.empty_like(n), counts.clone()
        index = torch.empty(count, dtype=torch.int64, device=device)
        done = torch.tensor(ctl.done, device=device)
        n_lo, n_hi, wd, ln_kd = fixed.unbind(0)
        for step in range(1, stride):
            active = code < done
            n_active = int(torch.count_nonzero(active))
            if n_active == 0:
                break
            if 2 * n_active <= active.numel() or len(rows) * active.numel() >= _HISTORY:
                tally()
            if 2 * n_active <= active.numel():
                gone = (~active).nonzero().squeeze(1)
                at = pos.index_select(0, gone)
                out_n[at], out_read[at] = n.index_select(0, gone), read.index_select(0, gone)
                out_counts[at] = counts.index_select(0, gone)
                keep = active.nonzero().squeeze(1)
                fixed = fixed.index_select(1, keep)
                pos, n, read, code, active, bounds, counts = (
                    v.index_select(0, keep) for v in (pos, n, read, code, active, bounds,
                                                      counts))
                n_lo, n_hi, wd, ln_kd = fixed.unbind(0)
                index = torch.empty_like(code)
            # one pulse: a device that is done has sign 0 and stays where it is
            z_kc, z_read = draws(pos, step)
            ln_k = z_kc.mul_(t["c2c"]).add_(ln_kd)
            pulse = ctl.pulse.index_select(0, code)
            u = n / wd
            js, fs = self._cell(t, u)
            row = index.copy_(pulse[:, 0] + js)  # cheaper than .long()
            mag = self._magnitude(t, row, pulse[:, 1:2], fs, pulse[:, 3], u, ln_k)
            # n + mag * sign, exactly: the product is exact (sign is +-1 or 0)
            n.addcmul_(mag, pulse[:, 2]).clamp_(n_lo, n_hi)
            # the verify read (of a device that is done: the read it had)
            read = torch.where(active, verify(n, z_read), read) if noisy else n
            code = decide()
        else:  # the caps bound every device's pulses by `limit`: this is never reached
            raise RuntimeError("write-and-verify did not finish within its pulse caps")
        tally()
        out_n[pos], out_read[pos], out_counts[pos] = n, read, counts
        g = out_read if noisy else self._g(t, out_n)
        return out_n, g, ctl.unpack(out_counts)

    @property
    def _compiled(self) -> bool:
        """Whether the compiled loop serves this model on the CPU: its window factors'
        exponents are 1 or 2 (a product; any other power would be a library call) and
        ``_COMPILED`` is set."""
        d = self.hw.device
        return _COMPILED and d.p_window_set in (1, 2) and d.p_window_reset in (1, 2)

    def _run_compiled(self, t: dict[str, torch.Tensor], ctl: _Controller, key: int,
                      stride: int, fixed: torch.Tensor, bounds: torch.Tensor, order: torch.Tensor,
                      n: torch.Tensor, read: torch.Tensor, *, noisy: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_run`'s pulse loop compiled (``_pulse_loop``), on the CPU's cores."""
        d = self.hw.device
        scalars = torch.stack([t[k] for k in ("s0", "s_scale", "inv_n_max", "n_min", "one",
                                              "c2c", "noise")]
                              + [torch.tensor(v, dtype=self.dtype)
                                 for v in (self._g0, self._gdx, self._g_cells - 1)])
        ints = np.array([self._ns, ctl.done, stride, int(self._state_uniform),
                         int(noisy), int(d.p_window_set), int(d.p_window_reset)],
                        dtype=np.int64)
        state = n.contiguous().clone()
        read = state.clone() if not noisy else read.contiguous().clone()
        counts = torch.empty(state.numel(), dtype=torch.int64)
        failed = np.zeros(1, dtype=np.int64)
        kernel = _pulse_loop if n.numel() >= _PARALLEL_DEVICES else _pulse_loop_serial
        kernel(_U(key & _MASK64), state.numpy(), read.numpy(), counts.numpy(),
               fixed.contiguous().numpy(), bounds.contiguous().numpy(),
               (ctl.start + 4 * order).contiguous().numpy(), ctl.pulse.contiguous().numpy(),
               ctl.following.numpy(), ctl.counts.numpy(), t["coef"].contiguous().numpy(),
               t["g_cell"].contiguous().numpy(), t["states"].contiguous().numpy(),
               scalars.numpy(), ints, failed)
        if failed[0]:  # the caps bound every device's pulses by `limit`: never reached
            raise RuntimeError("write-and-verify did not finish within its pulse caps")
        g = read if noisy else self._g(t, state)
        return state, g, ctl.unpack(counts)


def _stream_key(generator: torch.Generator) -> int:
    """The key of a write-and-verify call's counter-based draws, drawn from ``generator``
    (so a seeded generator repeats a call, and successive calls differ)."""
    seed = torch.randint(0, 1 << 62, (), generator=generator, device=generator.device)
    return key_for(int(seed), _PROGRAM_STREAM)


def _as_dtype_of(x, like):  # noqa: ANN001, ANN202 - compiled only (overload below)
    raise NotImplementedError("compiled only")


@overload(_as_dtype_of, inline="always")
def _as_dtype_of_impl(x, like):  # noqa: ANN001, ANN202
    """``x`` rounded to the float type of ``like``."""
    if like == types.float32:
        return lambda x, like: np.float32(x)
    return lambda x, like: np.float64(x)


@numba.njit(inline="always", cache=True, error_model="numpy")
def _pulse_device(i, key, n, read, counts, fixed, bounds, code0,  # noqa: ANN001, ANN202
                  pulse, following, counts_tab, coef, g_cell, states, scalars, ints, failed):
    """``ProgrammingModel._run``'s torch loop for device ``i``, in its dtype and its order
    of operations: from its first verify decision until it is done.

    In and out: ``n`` (states), ``read`` (verify reads: without noise, the states),
    ``counts`` (packed counters, out only). Per device: ``fixed`` rows (n_lo, n_hi, wd,
    ln kd), ``bounds`` (its three sorted thresholds), ``code0`` (its code before the first
    decision). Controller: ``pulse``, ``following``, ``counts_tab`` (:class:`_Controller`).
    Tables: ``coef``, ``g_cell``, ``states``. ``scalars``: s0, s_scale, inv_n_max, n_min,
    one, c2c, noise, g0, gdx, the last conductance cell, in the dtype. ``ints``: state
    nodes, DONE, the counter stride, a uniform state axis, noisy verify reads, the window
    factors' exponents. ``failed[0]`` is set when the device is not done within the
    stride."""
    s0, s_scale, inv_n_max, n_min, one, c2c, noise, g0, gdx, g_last = (
        scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5], scalars[6],
        scalars[7], scalars[8], scalars[9])
    ns, done, stride, uniform, noisy, p_set, p_reset = (
        ints[0], ints[1], ints[2], ints[3] != 0, ints[4] != 0, ints[5], ints[6])
    zero = one - one
    top_cell = _as_dtype_of(ns - 2, one)
    n_lo, n_hi, wd, ln_kd = fixed[0, i], fixed[1, i], fixed[2, i], fixed[3, i]
    b0, b1, b2 = bounds[i, 0], bounds[i, 1], bounds[i, 2]
    m, r = n[i], read[i]
    row = code0[i] + (b0 <= r) + (b1 <= r) + (b2 <= r)
    packed = counts_tab[row]
    code = following[row]
    k = 0
    while code < done:
        k += 1
        if k == stride:
            failed[0] = 1
            break
        z_kc, z_read = uniform_pair_normals(mix(key + _U(i * stride + k) * _G))
        ln_k = _as_dtype_of(np.float32(z_kc), one) * c2c + ln_kd
        base, fa, sign, is_set = pulse[code, 0], pulse[code, 1], pulse[code, 2], pulse[code, 3]
        u = m / wd
        if uniform:
            y = (u - s0) * s_scale
            js = np.floor(y)
            js = zero if js < zero else (top_cell if js > top_cell else js)
            fs = y - js
        else:
            j = 0
            while j < ns and states[j] <= u:
                j += 1
            j = min(max(j - 1, 0), ns - 2)
            fs = (u - states[j]) / (states[j + 1] - states[j])
            js = _as_dtype_of(j, one)
        fs = zero if fs < zero else (one if fs > one else fs)
        c = int(base + js)
        d0 = ((fs * coef[c, 6] + coef[c, 2]) * fa + coef[c, 0]) + fs * coef[c, 4]
        d1 = ((fs * coef[c, 7] + coef[c, 3]) * fa + coef[c, 1]) + fs * coef[c, 5]
        rate = _as_dtype_of(exp64(np.float64(d1 * ln_k + d0)), one)
        top, bottom = u * inv_n_max, (one / u) * n_min
        w = (top * top if p_set == 2 else top) if is_set != zero else \
            (bottom * bottom if p_reset == 2 else bottom)
        w = one - w
        w = zero if w < zero else w
        m = m + rate * w * sign
        m = n_lo if m < n_lo else m
        m = n_hi if m > n_hi else m
        if noisy:
            r = _conductance_of(m, g0, gdx, g_last, g_cell) \
                + noise * _as_dtype_of(np.float32(z_read), one)
        else:
            r = m
        row = code + (b0 <= r) + (b1 <= r) + (b2 <= r)
        packed += counts_tab[row]
        code = following[row]
    n[i], read[i], counts[i] = m, r, packed


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _pulse_loop(key, n, read, counts, fixed, bounds, code0,  # noqa: ANN001
                pulse, following, counts_tab, coef, g_cell, states, scalars, ints, failed):
    """``_pulse_device`` for every device, on all cores."""
    count = n.size
    per = 64
    for blk in numba.prange((count + per - 1) // per):
        for i in range(blk * per, min(count, (blk + 1) * per)):
            _pulse_device(i, key, n, read, counts, fixed, bounds, code0, pulse, following,
                          counts_tab, coef, g_cell, states, scalars, ints, failed)


@numba.njit(cache=True, error_model="numpy")
def _pulse_loop_serial(key, n, read, counts, fixed, bounds, code0,  # noqa: ANN001
                       pulse, following, counts_tab, coef, g_cell, states, scalars, ints,
                       failed):
    """``_pulse_device`` for every device, on one core (few devices: no threads to wake)."""
    for i in range(n.size):
        _pulse_device(i, key, n, read, counts, fixed, bounds, code0, pulse, following,
                      counts_tab, coef, g_cell, states, scalars, ints, failed)
