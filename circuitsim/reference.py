"""numpy reference of the bulk-switching RRAM compact model.

The same equations as the SPICE subcircuits of :mod:`netlists.device` (see its docstring),
solved directly: the barrier/bulk voltage split by a safeguarded Newton iteration, the
self-heating by fixed-point iteration, and the state equation by an adaptive stiff ODE solver.
Tests use it to check the SPICE model, and the array command uses it to turn a target read
conductance into the state that gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from netlists.config import DeviceParams
from netlists.device import K_B_EV, Q_E
from netlists.errors import ConfigError

__all__ = ["DeviceModel", "Transient"]

_SINH_CLAMP = 50.0


def _sinh(x: np.ndarray) -> np.ndarray:
    return np.sinh(np.clip(x, -_SINH_CLAMP, _SINH_CLAMP))


@dataclass(frozen=True)
class Transient:
    """A voltage-driven transient of one device: time, state, current, temperature."""

    t_s: np.ndarray
    n: np.ndarray
    i_a: np.ndarray
    temp_k: np.ndarray


class DeviceModel:
    """The compact model of one device (or of many with the same parameters, vectorized)."""

    def __init__(self, params: DeviceParams) -> None:
        self.p = params
        area = params.area_nm2 * 1e-18
        length = params.thickness_nm * 1e-9
        self._rb_coef = length / (params.z_vo * Q_E * params.mobility_m2_vs * 1e26 * area)
        self._gb0 = area * params.j_b_s_m2
        self._field = params.z_vo * params.hop_distance_nm * 1e-9 / (2.0 * length)

    # ---- conduction -------------------------------------------------------------------
    def bulk_resistance(self, n: np.ndarray) -> np.ndarray:
        """Bulk plus series resistance, ohm."""
        return self._rb_coef / np.asarray(n, float) + self.p.r_series_ohm

    def barrier_conductance(self, n: np.ndarray, temp_k: np.ndarray) -> np.ndarray:
        """Small-signal conductance ``G_b`` of the barrier, S."""
        vt = K_B_EV * np.asarray(temp_k, float)
        return self._gb0 * np.exp(-(self.p.phi_b0_ev - self.p.alpha_b_ev
                                    * np.asarray(n, float) ** 0.25) / vt)

    def current_at(self, v: np.ndarray, n: np.ndarray, temp_k: np.ndarray) -> np.ndarray:
        """Device current at a given temperature, A (barrier/bulk split solved exactly)."""
        v, n, temp_k = np.broadcast_arrays(*(np.asarray(a, float) for a in (v, n, temp_k)))
        gb = self.barrier_conductance(n, temp_k)
        rt = self.bulk_resistance(n)
        v0 = self.p.v0_barrier_v
        lo, hi = np.minimum(v, 0.0), np.maximum(v, 0.0)
        vb = v * (1.0 / gb) / (1.0 / gb + rt)  # linear split as the first guess
        for _ in range(100):
            f = gb * v0 * _sinh(vb / v0) - (v - vb) / rt
            lo = np.where(f < 0, vb, lo)
            hi = np.where(f > 0, vb, hi)
            df = gb * np.cosh(np.clip(vb / v0, -_SINH_CLAMP, _SINH_CLAMP)) + 1.0 / rt
            step = vb - f / df
            # Newton where it stays inside the bracket, bisection elsewhere.
            vb_new = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
            if np.all(np.abs(vb_new - vb) <= 1e-15 + 1e-13 * np.abs(v)):
                vb = vb_new
                break
            vb = vb_new
        return (v - vb) / rt

    def current(self, v: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Steady-state current (A) and temperature (K) with Joule self-heating."""
        v = np.asarray(v, float)
        temp = np.full(np.broadcast(v, np.asarray(n)).shape, self.p.t_ambient_k)
        for _ in range(200):
            i = self.current_at(v, n, temp)
            new = self.p.t_ambient_k + self.p.r_th_k_w * np.abs(i * v)
            if np.all(np.abs(new - temp) < 1e-9):
                temp = new
                break
            temp = new
        return self.current_at(v, n, temp), temp

    def read_conductance(self, n: np.ndarray, v_read: float = 0.1) -> np.ndarray:
        """I(v_read) / v_read of the device alone, S."""
        i, _ = self.current(v_read, n)
        return i / v_read

    def state_for_conductance(self, g: np.ndarray, v_read: float = 0.1) -> np.ndarray:
        """The state ``N`` whose read conductance is ``g`` (S); inverse of read_conductance."""
        g = np.asarray(g, float)
        g_lo = float(self.read_conductance(self.p.n_min, v_read))
        g_hi = float(self.read_conductance(self.p.n_max, v_read))
        bad = (g < g_lo * (1 - 1e-9)) | (g > g_hi * (1 + 1e-9)) | ~np.isfinite(g)
        if np.any(bad):
            raise ConfigError(
                f"conductance {float(np.ravel(g[bad])[0]) * 1e6:.4g} uS is outside the device's "
                f"window [{g_lo * 1e6:.4g}, {g_hi * 1e6:.4g}] uS at a {v_read:g} V read")
        lo = np.full(g.shape, self.p.n_min)
        hi = np.full(g.shape, self.p.n_max)
        for _ in range(60):  # bisection on a monotonic function: 2^-60 of the window
            mid = 0.5 * (lo + hi)
            above = self.read_conductance(mid, v_read) > g
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        return 0.5 * (lo + hi)

    # ---- switching --------------------------------------------------------------------
    def rate(self, v: np.ndarray, n: np.ndarray, i: np.ndarray, temp_k: np.ndarray, *,
             kc: float = 1.0, kd: float = 1.0, wd: float = 1.0) -> np.ndarray:
        """dN/dt in (1e26 m^-3)/s."""
        p = self.p
        vt = K_B_EV * np.asarray(temp_k, float)
        vsw = np.asarray(v, float) - np.asarray(i, float) * p.r_series_ohm
        s = _sinh(self._field * vsw / vt)
        n = np.maximum(np.asarray(n, float), 1e-3)
        up = p.nu_set_hz * np.exp(-p.ea_set_ev / vt) * s * np.maximum(
            0.0, 1.0 - (n / (p.n_max * wd)) ** p.p_window_set)
        down = p.nu_reset_hz * np.exp(-p.ea_reset_ev / vt) * s * np.maximum(
            0.0, 1.0 - (p.n_min * wd / n) ** p.p_window_reset)
        return kc * kd * np.where(vsw > 0, up, down)

    def simulate(self, t_s: np.ndarray, v_of_t, n0: float, *, kd: float = 1.0,
                 wd: float = 1.0, max_step_s: float | None = None) -> Transient:
        """Drive the device alone with ``v_of_t(t)`` (V) and integrate state and temperature.

        Returns the trajectory sampled at ``t_s``. Uses the same thermal RC as the SPICE model.
        """
        from scipy.integrate import solve_ivp  # deferred: scipy.integrate costs ~0.5 s to import

        p = self.p
        c_th = p.tau_th_s / p.r_th_k_w if p.r_th_k_w > 0 else 0.0

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            n, dtemp = y
            v = v_of_t(t)
            temp = p.t_ambient_k + dtemp
            i = self.current_at(v, n, temp)
            dn = self.rate(v, n, i, temp, kd=kd, wd=wd)
            if c_th > 0:
                ddt = (abs(i * v) - dtemp / p.r_th_k_w) / c_th
            else:
                ddt = 0.0
            return np.array([float(dn), float(ddt)])

        t_s = np.asarray(t_s, float)
        sol = solve_ivp(rhs, (t_s[0], t_s[-1]), [n0, 0.0], method="LSODA", t_eval=t_s,
                        rtol=1e-8, atol=[1e-9, 1e-6],
                        max_step=max_step_s if max_step_s else np.inf)
        if not sol.success:
            raise RuntimeError(f"reference integration failed: {sol.message}")
        n, dtemp = sol.y
        temp = p.t_ambient_k + dtemp
        v = np.array([v_of_t(t) for t in t_s])
        return Transient(t_s=t_s, n=n, i_a=self.current_at(v, n, temp), temp_k=temp)
