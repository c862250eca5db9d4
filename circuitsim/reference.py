"""numpy reference of a device model: the equations of its SPICE subcircuits, solved directly.

A device model (``netlists.device_model.DeviceModelInterface``; by default the bulk-switching
compact model of :mod:`netlists.device`, see its docstring) gives the current at a fixed
temperature and the state's rate; this module adds the self-heating by fixed-point
iteration and the state equation by an adaptive stiff ODE solver. Tests use it to check the
SPICE model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from netlists.config import DeviceParams
from netlists.device_model import DeviceModelInterface, device_model

__all__ = ["DeviceModel", "Transient"]


@dataclass(frozen=True)
class Transient:
    """A voltage-driven transient of one device: time, state, current, temperature."""

    t_s: np.ndarray
    n: np.ndarray
    i_a: np.ndarray
    temp_k: np.ndarray


class DeviceModel:
    """The numpy reference of one device (or of many with the same parameters, vectorized).

    ``model`` is a device model, or the ``DeviceParams`` of the default one.
    """

    def __init__(self, model: DeviceParams | DeviceModelInterface) -> None:
        if isinstance(model, DeviceParams):
            model = device_model(model)
        self.model = model
        self.p = model.params

    # ---- conduction -------------------------------------------------------------------
    def current_at(self, v: np.ndarray, n: np.ndarray, temp_k: np.ndarray) -> np.ndarray:
        """Device current at a given temperature, A (the model's equations)."""
        return self.model.current_at(v, n, temp_k)

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

    # ---- switching --------------------------------------------------------------------
    def rate(self, v: np.ndarray, n: np.ndarray, i: np.ndarray, temp_k: np.ndarray, *,
             kc: float = 1.0, kd: float = 1.0, wd: float = 1.0) -> np.ndarray:
        """dN/dt in the model's state units per second (the model's equations)."""
        return self.model.rate(v, n, i, temp_k, kc=kc, kd=kd, wd=wd)

    def simulate(self, t_s: np.ndarray, v_of_t, n0: float, *, kd: float = 1.0,
                 wd: float = 1.0, max_step_s: float | None = None) -> Transient:
        """Drive the device alone with ``v_of_t(t)`` (V) and integrate state and temperature.

        Returns the trajectory sampled at ``t_s``. Uses the same thermal RC as the SPICE model.
        """
        from scipy.integrate import solve_ivp  # deferred: scipy.integrate is slow to import

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
