"""Fit the compact model's parameters to measured pulse trains, and confirm the fit in ngspice.

What is fitted (:func:`fit_device`), by weighted least squares on each read after a pulse
predicted from the measured read before it (the one-step residual: a cycle-to-cycle
fluctuation moves one pulse, not the rest of its train), with the fast 1T1R model of
:mod:`circuitsim.cell_reference` (the device's numpy equations, the access transistor
tabulated by ngspice once):

* the named device parameters (:data:`DEFAULT_PARAMS` unless told otherwise), shared by
  every device of the data, in log space;
* per device, its rate multiplier ``kd`` and window multiplier ``wd``, their geometric means
  held at 1 (they are the population's spread; its centre is in the shared parameters);
* the cycle-to-cycle spread ``c2c_sigma`` by maximum likelihood from the one-step residuals
  (each pulse's residual spread is its read noise plus ``c2c_sigma`` times the read's
  sensitivity to its pulse's multiplier), the device-to-device spreads from the devices'
  ``kd`` and ``wd`` (three devices or more), and the read noise from repeated reads.

``n_max`` is held (it sets the state's scale, which conductance data cannot fix: scaling the
states, the mobility and the rates together leaves the reads almost unchanged), and so are
the activation energies (data at one temperature cannot separate them from the rate
prefactors). A parameter counts as *determined* when its relative standard error from the
fit's Jacobian is below :data:`DETERMINED_BELOW`; the others are reported as such. The
error is statistical: the fast model's own error on the reads (0.01-0.04 uS against ngspice)
and the devices' finite sample (the geometric mean of their ``kd``, ``wd`` is the
population's only to ``d2d / sqrt(devices)``) add a few percent.

The fit also reports the free-running trains (each device's reads from its first one, every
pulse at ``kc = 1``): they accumulate the cycle-to-cycle fluctuations that the one-step
residual leaves out. :func:`confirm_in_spice` replays those trains in ngspice's pulse deck
with the fitted parameters and each device's ``kd``, ``wd`` and initial state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from circuitsim.cell_reference import Bias, CellReference, TransistorCurves
from circuitsim.interfaces import SpiceRunner
from circuitsim.measured import DeviceTrace, MeasuredData
from netlists.config import DeviceParams, HardwareConfig
from netlists.errors import ConfigError, SimulatorError

__all__ = ["DEFAULT_PARAMS", "FITTABLE", "RATE_PARAMS", "DETERMINED_BELOW", "FitResult",
           "fit_device", "confirm_in_spice", "device_block", "synthesize", "write_fit",
           "plot_fit"]

#: What ``device fit`` fits when ``--params`` is not given.
DEFAULT_PARAMS = ("mobility_m2_vs", "n_min", "nu_set_hz", "nu_reset_hz", "hop_distance_nm",
                  "p_window_set", "p_window_reset")
#: Parameters a fit may name: the device's positive physical quantities that pulse trains
#: and reads at one temperature can inform.
FITTABLE = DEFAULT_PARAMS + ("alpha_b_ev", "j_b_s_m2", "phi_b0_ev", "r_series_ohm",
                             "v0_barrier_v", "r_th_k_w", "thickness_nm", "area_nm2")
#: A parameter is determined by the data when its relative standard error is below this.
DETERMINED_BELOW = 0.02
#: The fit is reported as poor when its rms residual exceeds this fraction of the span of
#: the measured conductances.
POOR_FIT_FRACTION = 0.02
#: The ngspice replay of the fitted trains must agree with the fast model within this, uS rms.
SPICE_AGREE_US = 0.25
#: Weight (uS per unit of log) of the rows that hold the devices' mean log kd and log wd at 0.
_GAUGE_WEIGHT = 1000.0
_FD_STEP = 1e-5
#: The weighted residual of every pulse at a trial point the fast model cannot solve.
_INFEASIBLE = 1e4
_MAX_NFEV = 100
#: The rate parameters: the first stage of :func:`fit_device` fits a free rate per bias
#: in their place.
RATE_PARAMS = ("nu_set_hz", "nu_reset_hz", "hop_distance_nm")
#: The fast model's own error on one pulse's read, uS (added to each pulse's spread).
_MODEL_FLOOR_US = 0.01
#: Narrower ranges than the configuration allows, where the search would otherwise leave
#: the physical shapes: as ``p -> 0`` the window factor ``1 - (n_min/n)^p`` flattens to
#: ``p ln(n/n_min)``, a direction that trades ``p`` against the rate without end.
#: An ion hop far below an interatomic distance, or far above, is no longer the model.
_SEARCH = {"p_window_set": (0.25, 20.0), "p_window_reset": (0.25, 20.0),
           "hop_distance_nm": (0.1, 3.0)}
#: No parameter is searched beyond this factor either side of its start.
_SEARCH_FACTOR = 1e3
#: The cycle-to-cycle spread assumed for the first pass's weights.
_START_C2C = 0.1
#: Step in ``log kc`` for a read's sensitivity to the cycle-to-cycle multiplier.
_KC_STEP = 0.02


@dataclass
class FitResult:
    """What :func:`fit_device` found. ``rms_us``/``max_us``: the one-step residuals (the
    fit's own); ``trains_*``: the free-running trains of the fast model; ``spice_*``: those
    trains replayed in ngspice (:func:`confirm_in_spice`)."""

    hardware: HardwareConfig
    params: dict[str, float]
    relative_error: dict[str, float]
    determined: dict[str, bool]
    devices: list[dict[str, Any]]
    spread: dict[str, dict[str, Any]]
    read_noise_us: float | None
    rms_us: float
    max_us: float
    trains_rms_us: float
    trains_max_us: float
    predicted_us: list[np.ndarray]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    #: what the data leaves out, said but not a warning
    notes: list[str] = field(default_factory=list)
    spice_rms_us: float | None = None
    spice_max_us: float | None = None
    spice_predicted_us: list[np.ndarray] | None = None
    spice_vs_fast_rms_us: float | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON-able figures (``device fit --json``)."""
        def r(v: float | None) -> float | None:
            return None if v is None else float(f"{v:.6g}")

        return {
            "params": {k: r(v) for k, v in self.params.items()},
            "relative_error": {k: r(v) for k, v in self.relative_error.items()},
            "determined": dict(self.determined),
            "rms_us": r(self.rms_us), "max_us": r(self.max_us),
            "trains_rms_us": r(self.trains_rms_us), "trains_max_us": r(self.trains_max_us),
            "spice_rms_us": r(self.spice_rms_us), "spice_max_us": r(self.spice_max_us),
            "spice_vs_fast_rms_us": r(self.spice_vs_fast_rms_us),
            "devices": len(self.devices),
            "pulses": sum(d["pulses"] for d in self.devices),
            "per_device": [{k: (r(v) if isinstance(v, float) else v) for k, v in d.items()}
                           for d in self.devices],
            "spread": {k: {n: (r(x) if isinstance(x, float) else x) for n, x in v.items()}
                       for k, v in self.spread.items()},
            "read_noise_us": r(self.read_noise_us),
            "fit_seconds": r(self.seconds),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


class _Problem:
    """The data laid out for the fast model.

    Free-running trains: a bias index per step (-1: no pulse) for each device, from its
    first read. One-step pulses: each write pulse with the measured read before it (the mean
    of the reads since the previous pulse, ``before_reads`` of them) and the read after it.
    """

    def __init__(self, data: MeasuredData, hw: HardwareConfig) -> None:
        self.data = data
        keys: list[tuple[Bias, float]] = []
        rows = []
        dev, key, before, after, count = [], [], [], [], []
        for i, d in enumerate(data.devices):
            idx = []
            since = [float(d.conductance_us[0])]
            for k in range(1, len(d.kind)):
                g = float(d.conductance_us[k])
                if d.kind[k] not in ("set", "reset"):
                    idx.append(-1)
                    since.append(g)
                    continue
                pair = (Bias(1 if d.kind[k] == "set" else -1, float(d.amplitude_v[k]),
                             float(d.gate_v[k])), float(d.width_s[k]))
                if pair not in keys:
                    keys.append(pair)
                idx.append(keys.index(pair))
                dev.append(i)
                key.append(keys.index(pair))
                before.append(float(np.mean(since)))
                count.append(len(since))
                after.append(g)
                since = [g]
            rows.append(idx)
        self.keys = keys
        steps = max(len(r) for r in rows)
        self.index = np.full((len(rows), steps), -1)
        self.mask = np.zeros((len(rows), steps + 1), bool)
        self.measured = np.zeros((len(rows), steps + 1))
        for i, (r, d) in enumerate(zip(rows, data.devices)):
            self.index[i, :len(r)] = r
            self.mask[i, :len(r) + 1] = True
            self.measured[i, :len(r) + 1] = d.conductance_us
        self.step_device = np.array(dev, int)
        self.step_key = np.array(key, int)
        self.before_us = np.array(before)
        self.after_us = np.array(after)
        self.before_reads = np.array(count)
        self.biases = [k[0] for k in keys] + [CellReference.read_bias(hw)]

    def one_step(self, cell: CellReference, kd: np.ndarray, wd: np.ndarray, *,
                 kc: float = 1.0, rate_scale: np.ndarray | None = None) -> np.ndarray:
        """The read after each pulse (uS), from the measured read before it; ``kc`` scales
        every pulse's rate, ``rate_scale`` each bias's (:meth:`CellReference.trains`)."""
        dev = self.step_device
        lo, hi = cell.model.window(wd[dev])
        n_before = np.clip(cell.state_for(self.before_us * 1e-6), lo, hi)
        n_after = cell.trains(self.step_key[:, None], self.keys, n_before, kd=kd[dev],
                              wd=wd[dev], kc=np.full((dev.size, 1), kc),
                              rate_scale=rate_scale)[:, 1]
        return cell.read_conductance(n_after) * 1e6

    def sensitivity(self, cell: CellReference, kd: np.ndarray, wd: np.ndarray,
                    rate_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`one_step` and its derivative in ``log kc`` (uS): how far one pulse's
        cycle-to-cycle multiplier moves the read after it."""
        base = self.one_step(cell, kd, wd, rate_scale=rate_scale)
        up = self.one_step(cell, kd, wd, kc=math.exp(_KC_STEP), rate_scale=rate_scale)
        return base, (up - base) / _KC_STEP

    def free_running(self, cell: CellReference, kd: np.ndarray, wd: np.ndarray) -> tuple[
            np.ndarray, np.ndarray]:
        """Every read (uS) of each device's trains from the state of its first read, and
        those initial states."""
        lo, hi = cell.model.window(wd)
        n0 = np.clip(cell.state_for(self.measured[:, 0] * 1e-6), lo, hi)
        states = cell.trains(self.index, self.keys, n0, kd=kd, wd=wd)
        return cell.read_conductance(states) * 1e6, n0


def device_block(hw: HardwareConfig, values: dict[str, float]) -> HardwareConfig:
    """``hw`` with the device fields in ``values`` replaced (validated); the pristine state
    ``n_init`` is kept inside the new window."""
    block = dataclasses.asdict(hw.device)
    block.update(values)
    block["n_init"] = min(max(block["n_init"], block["n_min"]), block["n_max"])
    return hw.replace(device=block)


def _bounds(name: str, hw: HardwareConfig) -> tuple[float, float]:
    """The search range of ``name``, in logs: the configuration's range, narrowed to
    :data:`_SEARCH` and to a factor :data:`_SEARCH_FACTOR` either side of the start."""
    meta = {f.name: f.metadata for f in dataclasses.fields(DeviceParams)}[name]
    start = float(getattr(hw.device, name))
    lo = max(meta["lo"] if meta["lo"] is not None else 0.0, 1e-30) * (1 + 1e-9)
    hi = meta["hi"] if meta["hi"] is not None else 1e30
    lo, hi = max(lo, start / _SEARCH_FACTOR), min(hi, start * _SEARCH_FACTOR)
    if name == "n_min":
        hi = min(hi, 0.9 * hw.device.n_max)
    if name in _SEARCH:
        lo, hi = max(lo, _SEARCH[name][0]), min(hi, _SEARCH[name][1])
    return math.log(lo), math.log(hi)


def _check_params(params: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(DEFAULT_PARAMS if params is None else params)
    for name in names:
        if name not in FITTABLE:
            raise ConfigError(f"--params: {name!r} cannot be fitted; choose from "
                              f"{', '.join(FITTABLE)}", field="--params")
    if len(set(names)) != len(names) or not names:
        raise ConfigError("--params must name each parameter once", field="--params")
    return names


class _Objective:
    """Weighted one-step residuals in the unknowns ``x``: the logs of the shared parameters
    ``names``, then (``scaled``) one log rate multiplier per bias of the data, then each
    device's log kd and log wd; two rows hold the devices' mean log kd and log wd at 0."""

    def __init__(self, prob: _Problem, hw: HardwareConfig, curves: TransistorCurves,
                 names: Sequence[str], *, scaled: bool) -> None:
        self.prob, self.hw, self.curves = prob, hw, curves
        self.names = tuple(names)
        self.g = len(self.names)
        self.k = len(prob.keys) if scaled else 0
        self.n_dev = len(prob.data.devices)
        self.sigma = np.ones(prob.step_device.size)
        self._cache: dict[bytes, CellReference] = {}

    def values(self, x: np.ndarray) -> dict[str, float]:
        return _values(self.names, x[:self.g])

    def unpack(self, x: np.ndarray) -> tuple[CellReference, np.ndarray, np.ndarray,
                                             np.ndarray | None]:
        """(cell, kd, wd, rate scale) at ``x``."""
        key = x[:self.g].tobytes()
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = CellReference(device_block(self.hw, self.values(x)),
                                             self.curves)
        g, k, d = self.g, self.k, self.n_dev
        scale = np.exp(x[g:g + k]) if k else None
        return (self._cache[key], np.exp(x[g + k:g + k + d]), np.exp(x[g + k + d:]), scale)

    def predict(self, x: np.ndarray) -> np.ndarray:
        cell, kd, wd, scale = self.unpack(x)
        return self.prob.one_step(cell, kd, wd, rate_scale=scale)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        g, k, d = self.g, self.k, self.n_dev
        try:
            r = (self.predict(x) - self.prob.after_us) / self.sigma
        except SimulatorError:  # a trial point where the cell has no solution: refused
            return np.full(self.prob.step_device.size + 2, _INFEASIBLE)
        gauge = [_GAUGE_WEIGHT * x[g + k:g + k + d].mean(), _GAUGE_WEIGHT * x[g + k + d:].mean()]
        return np.concatenate([r, gauge])

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Forward differences: one evaluation per shared parameter; the per-bias and
        per-device unknowns each move only their own pulses, so a block of them shares one."""
        base = self.residuals(x)
        jac = np.zeros((base.size, x.size))
        for j in range(self.g):
            xp = x.copy()
            xp[j] += _FD_STEP
            jac[:, j] = (self.residuals(xp) - base) / _FD_STEP
        blocks = [(self.g + np.arange(self.k), self.prob.step_key, None)] if self.k else []
        start = self.g + self.k
        for b in range(2):
            blocks.append((start + b * self.n_dev + np.arange(self.n_dev),
                           self.prob.step_device, b))
        for cols, owner, gauge in blocks:
            xp = x.copy()
            xp[cols] += _FD_STEP
            diff = (self.residuals(xp) - base) / _FD_STEP
            for i, col in enumerate(cols):
                rows = np.flatnonzero(owner == i)
                jac[rows, col] = diff[rows]
                if gauge is not None:
                    jac[-2 + gauge, col] = _GAUGE_WEIGHT / self.n_dev
        return jac

    def solve(self, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Any:
        """Trust-region least squares from ``x0``. The search moves in logs relative to
        ``x0`` (its first trust region: a factor e on each unknown), so that it cannot leap
        into a far, degenerate corner on its first step."""
        from scipy.optimize import least_squares

        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        sol = least_squares(lambda u: self.residuals(x0 + u), np.zeros_like(x0),
                            jac=lambda u: self.jacobian(x0 + u), bounds=(lo - x0, hi - x0),
                            method="trf", x_scale=1.0, max_nfev=_MAX_NFEV, xtol=1e-8,
                            ftol=1e-10)
        sol.x = x0 + sol.x
        return sol

    def reweight(self, x: np.ndarray, read_noise: float | None) -> dict[str, dict[str, Any]]:
        """Fit the spreads at ``x`` and weight each pulse by the spread they give it."""
        cell, kd, wd, scale = self.unpack(x)
        after, slope = self.prob.sensitivity(cell, kd, wd, scale)
        spread = _spreads(self.prob, after - self.prob.after_us, slope, kd, wd, read_noise)
        c2c = spread["c2c_sigma"]["value"] or 0.0
        self.sigma = np.sqrt(_pulse_noise(self.prob, read_noise) + (c2c * slope) ** 2)
        return spread


def _rates_from_scales(hw: HardwareConfig, cell: CellReference, prob: _Problem,
                       scale: np.ndarray, rate_names: Sequence[str]) -> dict[str, float]:
    """The rate parameters (``rate_names`` of :data:`RATE_PARAMS`) that best give each
    bias's fitted rate multiplier ``scale``, at the typical state its pulses start from
    (each bias's voltage and temperature there do not depend on the rate parameters)."""
    from scipy.optimize import least_squares

    from netlists.device import BulkSwitchingModel

    lo, hi = cell.model.window()
    points = []
    for k, (bias, _width) in enumerate(prob.keys):
        mine = prob.step_key == k
        n = np.clip(np.median(cell.state_for(prob.before_us[mine] * 1e-6)), lo, hi)
        i, vdev, temp = cell.solve(bias, np.array([n]))
        vsw = bias.polarity * (vdev - i * hw.device.r_series_ohm)
        points.append((bias.polarity, float(vsw[0]), float(temp[0]), int(mine.sum())))
    def log_rates(logs: np.ndarray) -> np.ndarray:
        model = BulkSwitchingModel(dataclasses.replace(cell.hw.device,
                                                       **_values(rate_names, logs)))
        return np.array([math.log(abs(float(model.hop_rate(pol, v, t))) + 1e-300)
                         for pol, v, t, _ in points])

    x0 = np.log([getattr(cell.hw.device, n) for n in rate_names])
    target = log_rates(x0) + np.log(scale)
    weight = np.sqrt([c for *_, c in points])
    bounds = np.array([_bounds(n, hw) for n in rate_names]).T
    sol = least_squares(lambda x: weight * (log_rates(x) - target), np.clip(x0, *bounds),
                        bounds=tuple(bounds), method="trf", x_scale=1.0)
    return _values(rate_names, sol.x)


def fit_device(data: MeasuredData, hw: HardwareConfig, *, runner: SpiceRunner,
               params: Sequence[str] | None = None) -> FitResult:
    """Fit ``params`` (default :data:`DEFAULT_PARAMS`) of ``hw.device`` to ``data``.

    Two stages. First the rate parameters among ``params`` (:data:`RATE_PARAMS`) are
    replaced by a free rate multiplier per bias of the data, a well-conditioned problem
    (each multiplier moves only its own pulses); the rate parameters that best give those
    multipliers start the second stage, the fit of ``params`` themselves. Each stage's
    pulses are weighted by the spread of their reads and of their cycle-to-cycle multiplier.
    """
    started = time.perf_counter()
    names = _check_params(params)
    prob = _Problem(data, hw)
    n_dev = len(data.devices)
    n_free = len(names) + 2 * (n_dev - 1)
    steps = prob.step_device.size
    if data.pulses == 0:
        raise ConfigError(f"{data.path}: no set or reset pulse: the switching parameters "
                          "need pulse trains", field="--data")
    if steps <= n_free:
        raise ConfigError(
            f"{data.path}: {steps} pulses cannot fit {n_free} unknowns ({len(names)} "
            f"parameters, and kd and wd of {n_dev} device(s) but one): measure more pulses",
            field="--data")
    curves = TransistorCurves.solve(hw, prob.biases, runner=runner)
    read_noise = _read_noise(data)
    start = {n: float(getattr(hw.device, n)) for n in names}
    device_bounds = [(-1.5, 1.5)] * n_dev + [(-0.25, 0.25)] * n_dev

    def bounds(shared: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [_bounds(n, hw) for n in shared] + [(-10.0, 10.0)] * k + device_bounds
        lo, hi = np.array(rows).T
        return lo, hi

    rate_names = [n for n in names if n in RATE_PARAMS]
    shape_names = [n for n in names if n not in RATE_PARAMS]
    devices_x = np.zeros(2 * n_dev)
    values = dict(start)
    if rate_names:
        first = _Objective(prob, hw, curves, shape_names, scaled=True)
        first.sigma = np.sqrt(_pulse_noise(prob, read_noise)
                              + (_START_C2C * (prob.after_us - prob.before_us)) ** 2)
        x1 = np.concatenate([np.log([start[n] for n in shape_names]),
                             np.zeros(first.k), devices_x])
        x1 = first.solve(x1, *bounds(shape_names, first.k)).x
        cell, *_, scale = first.unpack(x1)
        values = {**start, **first.values(x1),
                  **_rates_from_scales(hw, cell, prob, scale, rate_names)}
        devices_x = x1[first.g + first.k:]
    obj = _Objective(prob, hw, curves, names, scaled=False)
    x = np.concatenate([np.log([values[n] for n in names]), devices_x])
    lo_b, hi_b = bounds(names, 0)
    obj.reweight(x, read_noise)
    for _ in range(2):
        sol = obj.solve(x, lo_b, hi_b)
        x = sol.x
        spread = obj.reweight(x, read_noise)
    cellf, kd, wd, _ = obj.unpack(x)
    fitted = _values(names, x[:obj.g])
    step_pred = prob.one_step(cellf, kd, wd)
    step_resid = step_pred - prob.after_us
    pred, n0 = prob.free_running(cellf, kd, wd)
    resid = (pred - prob.measured)[prob.mask]
    step_rms = float(np.sqrt(np.mean(step_resid ** 2)))
    # Standard errors: the weighted residuals' own scale (>= 1 when the weights are too
    # optimistic) times the Jacobian's curvature.
    dof = max(1, steps - n_free)
    s2 = max(1.0, float(np.sum((step_resid / obj.sigma) ** 2)) / dof)
    jac = obj.jacobian(x)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    rel = {n: float(np.sqrt(max(cov[j, j], 0.0))) for j, n in enumerate(names)}
    devices = [{"device": d.name, "kd": float(kd[i]), "wd": float(wd[i]),
                "n0": float(n0[i]), "pulses": d.pulses}
               for i, d in enumerate(data.devices)]
    block = {k: v["value"] for k, v in spread.items() if v["estimated"]}
    fit_hw = device_block(device_block(hw, fitted), block)
    predicted = [pred[i, prob.mask[i]] for i in range(n_dev)]
    span = float(np.ptp(prob.measured[prob.mask]))
    warnings = []
    if step_rms > POOR_FIT_FRACTION * max(span, 1e-9):
        warnings.append(
            f"the model does not follow this data: rms residual {step_rms:.3g} uS is "
            f"{100 * step_rms / max(span, 1e-9):.1f}% of the measured span {span:.3g} uS "
            f"(above {100 * POOR_FIT_FRACTION:g}%); the device may switch in a way the "
            "bulk-switching model cannot describe (e.g. abrupt, filamentary)")
    for j, n in enumerate(names):
        if min(x[j] - lo_b[j], hi_b[j] - x[j]) < 1e-6:
            warnings.append(f"{n} = {fitted[n]:.4g} ended on the bound of its search range")
    if not sol.success:
        warnings.append(f"the least-squares fit stopped without converging: {sol.message}")
    notes = [] if read_noise is not None else [
        "no repeated reads (polarity 'read'): the read noise is unknown, so c2c_sigma "
        "includes it and no [surrogate] read_noise is written"]
    return FitResult(
        hardware=fit_hw, params=fitted, relative_error=rel,
        determined={n: rel[n] < DETERMINED_BELOW for n in names}, devices=devices,
        spread=spread, read_noise_us=read_noise, rms_us=step_rms,
        max_us=float(np.max(np.abs(step_resid))),
        trains_rms_us=float(np.sqrt(np.mean(resid ** 2))),
        trains_max_us=float(np.max(np.abs(resid))), predicted_us=predicted,
        seconds=time.perf_counter() - started, warnings=warnings, notes=notes)


def _values(names: Sequence[str], logs: np.ndarray) -> dict[str, float]:
    return {n: float(np.exp(v)) for n, v in zip(names, logs)}


def _read_noise(data: MeasuredData) -> float | None:
    """Read noise, uS rms, from reads repeated with no pulse between (None without any)."""
    diffs = [d.conductance_us[k] - d.conductance_us[k - 1]
             for d in data.devices for k in range(1, len(d.kind)) if d.kind[k] == "read"]
    if len(diffs) < 2:
        return None
    return float(np.sqrt(np.mean(np.square(diffs)) / 2.0))


def _pulse_noise(prob: _Problem, read_noise_us: float | None) -> np.ndarray:
    """Each one-step residual's variance from the reads alone, uS^2: the read after and the
    mean of the reads before, plus the fast model's own error."""
    noise = read_noise_us or 0.0
    return noise ** 2 * (1 + 1 / prob.before_reads) + _MODEL_FLOOR_US ** 2


def _spreads(prob: _Problem, resid_us: np.ndarray, kc_slope_us: np.ndarray, kd: np.ndarray,
             wd: np.ndarray, read_noise_us: float | None) -> dict[str, dict[str, Any]]:
    """The cycle-to-cycle and device-to-device spreads, each with its standard error.

    Cycle to cycle: each pulse's one-step residual ``r`` is Gaussian with variance
    ``c2c^2 s^2 + v_read`` (``s``: the read's slope in ``log kc``, ``v_read`` from
    :func:`_pulse_noise`); ``c2c`` maximizes that likelihood, its error from the Fisher
    information. Device to device: the sample spreads of the devices' ``log kd``, ``log wd``.
    """
    from scipy.optimize import minimize_scalar

    n_dev = kd.size
    out: dict[str, dict[str, Any]] = {}
    v_read = _pulse_noise(prob, read_noise_us)
    s2 = kc_slope_us ** 2
    r2 = resid_us ** 2

    def nll(c: float) -> float:
        var = c * c * s2 + v_read
        return float(np.sum(np.log(var) + r2 / var))

    informative = int(np.sum(s2 > v_read))
    if informative >= 10:
        c = float(minimize_scalar(nll, bounds=(0.0, 2.0), method="bounded",
                                  options={"xatol": 1e-5}).x)
        var = c * c * s2 + v_read
        info = 0.5 * float(np.sum((2 * c * s2 / var) ** 2))
        error = 1 / math.sqrt(info) if info > 0 else math.inf
        out["c2c_sigma"] = {"value": c, "error": error, "estimated": True,
                            "pulses": informative}
    else:
        out["c2c_sigma"] = {"value": None, "error": None, "estimated": False,
                            "pulses": informative}
    lkd, lwd = np.log(kd), np.log(wd)
    for name, logs in (("d2d_rate_sigma", lkd), ("d2d_window_sigma", lwd)):
        if n_dev >= 3:
            value = float(np.std(logs, ddof=1))
            out[name] = {"value": value, "error": value / math.sqrt(2 * (n_dev - 1)),
                         "estimated": True, "devices": n_dev}
        else:
            out[name] = {"value": None, "error": None, "estimated": False, "devices": n_dev}
    for v in out.values():
        v["determined"] = bool(v["estimated"] and v["value"] and
                               v["error"] < 0.1 * v["value"])
    return out


def confirm_in_spice(result: FitResult, data: MeasuredData, *,
                     runner: SpiceRunner) -> FitResult:
    """Replay each device's pulses in ngspice with the fitted parameters (cycle-to-cycle
    multipliers at 1); fills ``spice_rms_us``, ``spice_max_us`` and ``spice_predicted_us``."""
    from circuitsim.device import simulate_schedule
    from netlists.device_model import Variation
    from netlists.programming import Pulse

    hw = result.hardware
    predicted, errors, gaps = [], [], []
    for d, info, fast in zip(data.devices, result.devices, result.predicted_us):
        pulses = tuple(Pulse(d.kind[k], float(d.amplitude_v[k]), float(d.width_s[k]),
                             float(d.gate_v[k]))
                       for k in range(1, len(d.kind)) if d.kind[k] in ("set", "reset"))
        if not pulses:  # nothing to replay: its reads only gave the read noise
            predicted.append(fast)
            continue
        var = Variation(kd=info["kd"], wd=info["wd"], kc=np.ones(len(pulses)))
        n_lo, n_hi = hw.device.n_min * var.wd, hw.device.n_max * var.wd
        res = simulate_schedule(hw, pulses, runner=runner,
                                n0=float(np.clip(info["n0"], n_lo, n_hi)), variation=var)
        # reads with no pulse before them repeat the previous state
        g = res.conductance_us[np.cumsum([k in ("set", "reset") for k in d.kind])]
        predicted.append(g)
        errors.append(g - d.conductance_us)
        gaps.append(g - fast)
    err = np.concatenate(errors)
    result.spice_rms_us = float(np.sqrt(np.mean(err ** 2)))
    result.spice_max_us = float(np.max(np.abs(err)))
    result.spice_predicted_us = predicted
    gap = np.concatenate(gaps)
    result.spice_vs_fast_rms_us = float(np.sqrt(np.mean(gap ** 2)))
    if result.spice_vs_fast_rms_us > SPICE_AGREE_US:
        result.warnings.append(
            f"ngspice and the fast model differ by {result.spice_vs_fast_rms_us:.3g} uS rms "
            f"on these trains (above {SPICE_AGREE_US:g} uS): the fitted parameters may not "
            "hold in the circuit; check the pulses against the model's validity")
    return result


# ---- output -------------------------------------------------------------------------------
def write_fit(path: str | Path, result: FitResult, *, preset: str,
              base: str | Path | None = None) -> Path:
    """The fitted configuration as TOML, atomically: the tables of ``base`` (the
    ``--config`` the fit ran on, if any) with the whole ``[device]`` block fitted and, when
    the data gave the read noise, ``[surrogate] read_noise`` in uS. The header says to use
    it with ``--preset preset``."""
    import tomli_w

    from netlists.config import read_toml
    from netlists.files import atomic_write

    path = Path(path)
    data = read_toml(Path(base)) if base is not None else {}
    data["device"] = result.hardware.to_dict()["device"]
    if result.read_noise_us is not None:
        data.setdefault("surrogate", {}).update(
            read_noise=float(f"{result.read_noise_us:.6g}"), read_noise_unit="us")
    spice = (f", in ngspice {result.spice_rms_us:.3g} uS"
             if result.spice_rms_us is not None else "")
    lines = ["# Device parameters fitted to measured pulse trains (circuitsim device fit)"
             + (f" on top of {Path(base).name}" if base is not None else "") + ".",
             f"# Use it with the preset it was fitted on: --preset {preset} --config "
             f"{path.name}",
             f"# one-step rms {result.rms_us:.3g} uS (max {result.max_us:.3g}); free-running "
             f"trains rms {result.trains_rms_us:.3g} uS{spice}",
             f"# {len(result.devices)} device(s), "
             f"{sum(d['pulses'] for d in result.devices)} pulses"]
    for name, value in result.params.items():
        what = "determined" if result.determined[name] else "NOT determined by the data"
        lines.append(f"#   {name} = {value:.6g} (relative error "
                     f"{result.relative_error[name]:.2g}: {what})")
    lines += [f"# WARNING: {w}" for w in result.warnings]
    lines += [f"# Note: {n}" for n in result.notes]
    text = "\n".join(lines) + "\n\n" + tomli_w.dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def plot_fit(result: FitResult, data: MeasuredData, path: str | Path) -> Path:
    """Measured against fitted trains, one panel per device (at most six), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netlists.files import save_png

    shown = data.devices[:6]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.4 * len(shown) + 0.6),
                             squeeze=False, sharex=True)
    for ax, d, fast, spice in zip(axes[:, 0], shown, result.predicted_us,
                                  result.spice_predicted_us or [None] * len(shown)):
        k = np.arange(len(d.kind))
        ax.plot(k, d.conductance_us, ".", ms=3, color="0.35", label="measured")
        ax.plot(k, fast, "-", lw=1.0, label="fitted (numpy)")
        if spice is not None:
            ax.plot(k, spice, "--", lw=0.8, label="fitted (ngspice)")
        ax.set(ylabel="G, uS", title=d.name)
    axes[0, 0].legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("read")
    fig.suptitle(f"one-step rms {result.rms_us:.3g} uS; free-running trains rms "
                 f"{result.trains_rms_us:.3g} uS", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


# ---- synthetic data -----------------------------------------------------------------------
#: The pulse schedule :func:`synthesize` applies by default, ``(kind, amplitude V, gate V,
#: count)``: SET trains at three amplitudes and RESET trains at three word-line voltages
#: (the field acceleration of each), trains that reach both ends of the window (the window
#: exponents and bounds), then repeated reads (the read noise). In RESET the access
#: transistor is a source follower: the word line, not the source line's amplitude, sets the
#: device's voltage, and above ~3.6 V the last steps to the floor run away.
DEFAULT_SCHEDULE = (("set", 2.4, 2.0, 40), ("set", 2.8, 2.0, 20), ("reset", 3.0, 3.4, 60),
                    ("reset", 3.0, 3.6, 40), ("set", 2.2, 2.0, 40), ("reset", 3.0, 3.5, 30),
                    ("read", 0.0, 0.0, 10))


def synthesize(hw: HardwareConfig, *, runner: SpiceRunner, devices: int = 4, seed: int = 0,
               schedule: Sequence[tuple[str, float, float, int]] = DEFAULT_SCHEDULE,
               read_noise_us: float = 0.0, width_s: float | None = None) -> MeasuredData:
    """Pulse trains of ``devices`` cells of ``hw``, solved in ngspice, in the measured format.

    Device ``i`` draws its variation from ``seed + i`` (as ``circuitsim device pulses``
    does) and starts at its floor; ``schedule`` lists ``(kind, amplitude V, gate V, count)``
    with kind ``set``, ``reset`` or ``read`` (repeated reads); each read gets Gaussian noise
    of ``read_noise_us`` rms from ``seed``.
    """
    from circuitsim.device import simulate_schedule
    from netlists.programming import Pulse

    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"devices = {devices!r} must be a whole number >= 1",
                          field="devices")
    drv = hw.drive
    width = drv.t_write_s if width_s is None else float(width_s)
    kinds: list[str] = [""]
    pulses: list[Pulse] = []
    for kind, amp, gate, count in schedule:
        if kind not in ("set", "reset", "read"):
            raise ConfigError(f"schedule kind {kind!r} must be set, reset or read")
        kinds += [kind] * int(count)
        if kind != "read":
            pulses += [Pulse(kind, float(amp), width, float(gate))] * int(count)
    which = np.cumsum([k in ("set", "reset") for k in kinds])
    rng = np.random.default_rng(seed)
    traces = []
    for i in range(devices):
        res = simulate_schedule(hw, tuple(pulses), runner=runner, seed=seed + i)
        g = res.conductance_us[which] + read_noise_us * rng.standard_normal(len(kinds))
        amp = np.full(len(kinds), np.nan)
        wid, gate = amp.copy(), amp.copy()
        k_pulse = np.flatnonzero([k in ("set", "reset") for k in kinds])
        amp[k_pulse] = [p.amplitude_v for p in pulses]
        wid[k_pulse] = width
        gate[k_pulse] = [p.gate_v for p in pulses]
        traces.append(DeviceTrace(name=f"d{i}", kind=tuple(kinds), amplitude_v=amp,
                                  width_s=wid, gate_v=gate, conductance_us=g))
    return MeasuredData(devices=tuple(traces), path="<synthetic>")
