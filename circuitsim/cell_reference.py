"""Fast numpy model of one 1T1R cell under write-pulse trains, for fitting and checking.

The bulk-switching device is the compact model's own numpy equations
(:class:`netlists.device.BulkSwitchingModel`); the access NMOS is its BSIM4 card,
tabulated once by ngspice (:class:`TransistorCurves`: one ``.dc`` sweep for every bias the
trains use). Given a state ``N``, a pulse's bias is solved as the deck of
:mod:`netlists.programming` applies it (SET: bit line at +V, source line at 0; RESET: source
line at +V, bit line at 0; read: bit line at ``v_read_v``, word line at
``array.v_gate_read_v``), with the device's Joule heating in steady state. What it
neglects, and why it is small:

* the pulse's edges and the heating's lag: the state moves during the flat top,
  ``width - 2 t_edge``, at the steady temperature, while in ngspice the ramps add a little
  and the first thermal time constants (1 ns by default) take a little. Net, a 100 ns
  pulse's step is 0.1-0.7% above ngspice's: a bias that a fit absorbs into the rate
  prefactors, well inside their errors;
* the reads' own disturbance: 10^6 reads move the state by less than a level
  (``netlists/README.md``);
* transistor capacitances: they shape the edges, not the plateau.

:meth:`CellReference.trains` steps several devices (each with its ``kd``, ``wd``, initial
state and one ``kc`` per pulse) through their pulses at once: per pulse, the state equation
``dN/dt = kc kd W(N, wd) r(N)`` is integrated by RK4 with the rate ``r`` tabulated on a
state grid. ``tests/test_device_fit.py`` checks it against ngspice's pulse deck: 0.05 uS
rms over trains that cross the window, 0.15 uS at most, on the cliff of a runaway RESET.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from circuitsim.interfaces import SpiceRunner
from netlists.config import HardwareConfig
from netlists.device import K_B_EV, BulkSwitchingModel
from netlists.errors import ConfigError, SimulatorError
from netlists.periphery import fmt, nmos_instance, nmos_model_card

__all__ = ["Bias", "TransistorCurves", "CellReference", "READ"]

#: Step of the transistor's tabulated sweep, V (its curves are smooth on this scale).
_SWEEP_STEP_V = 1e-3
#: Points of the state grid the rates and read conductances are tabulated on.
_GRID_POINTS = 384
#: Newton steps that polish each bias's solution (quadratic: 3-4 reach 1e-14).
_POLISH_STEPS = 12
#: RK4 sub-steps per pulse (checked against 64 in tests: below 1e-4 of the window).
_SUBSTEPS = 2


@dataclass(frozen=True, order=True)
class Bias:
    """What the cell sees during one phase: ``polarity`` +1 (SET), -1 (RESET) or 0 (read),
    the pulse's amplitude and the word line's voltage, V."""

    polarity: int
    amplitude_v: float
    gate_v: float


READ = 0


class TransistorCurves:
    """The access transistor's current along the sweep of node ``m`` (its terminal on the
    device), for each bias: SET and read biases hold the source line at 0 (current from
    ``m`` to ground), RESET biases hold it at the amplitude (current from the source line
    into ``m``). One ngspice ``.dc`` sweep solves them all."""

    def __init__(self, vm: np.ndarray, currents: dict[Bias, np.ndarray]) -> None:
        self.vm = vm
        self.currents = currents
        self.slopes = {b: np.gradient(i, vm) for b, i in currents.items()}

    @classmethod
    def solve(cls, hw: HardwareConfig, biases: Sequence[Bias], *,
              runner: SpiceRunner) -> "TransistorCurves":
        biases = sorted(set(biases))
        if not biases:
            raise ConfigError("TransistorCurves.solve needs at least one bias")
        t = hw.transistor
        top = max(b.amplitude_v for b in biases)
        lines = ["access transistor curves (circuitsim.cell_reference)", ".options klu",
                 nmos_model_card(t), "Vm m 0 DC 0"]
        saves = ["v(m)"]
        for k, b in enumerate(biases):
            lines.append(f"Vg{k} g{k} 0 DC {fmt(b.gate_v)}")
            if b.polarity < 0:  # source line at +V: the transistor feeds node m
                lines += [f"Vs{k} s{k} 0 DC {fmt(b.amplitude_v)}",
                          nmos_instance(f"t{k}", f"s{k}", f"g{k}", "m", "0", t)]
            else:  # node m drains into the grounded source line
                lines += [f"Vs{k} s{k} 0 DC 0", nmos_instance(f"t{k}", "m", f"g{k}", f"s{k}",
                                                             "0", t)]
            saves.append(f"i(vs{k})")
        lines += [f".dc Vm 0 {fmt(top)} {fmt(_SWEEP_STEP_V)}", ".save " + " ".join(saves),
                  ".end"]
        res = runner.run("\n".join(lines) + "\n", name="transistor_curves")
        vm = np.asarray(res["v(m)"], float)
        currents = {b: np.abs(np.asarray(res[f"i(vs{k})"], float))
                    for k, b in enumerate(biases)}
        return cls(vm, currents)

    def current(self, bias: Bias, vm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Current (A) at node voltage ``vm`` and its slope dI/dVm (A/V)."""
        return (np.interp(vm, self.vm, self.currents[bias]),
                np.interp(vm, self.vm, self.slopes[bias]))


class CellReference:
    """The numpy 1T1R cell of the module docstring for one configuration.

    ``curves`` must hold every bias a train uses and the read bias (:meth:`read_bias`).
    ``margin`` widens the state grid beyond ``[n_min, n_max]`` for devices whose window
    draw ``wd`` scales it.
    """

    def __init__(self, hw: HardwareConfig, curves: TransistorCurves, *,
                 margin: float = 1.3) -> None:
        self.hw = hw
        self.model = BulkSwitchingModel(hw.device)
        self.curves = curves
        p = hw.device
        self.grid = np.linspace(p.n_min / margin, min(p.n_max * margin, 100.0), _GRID_POINTS)
        self._pulse_rates: dict[tuple[Bias, float], np.ndarray] = {}
        self._read = self._read_table()

    @staticmethod
    def read_bias(hw: HardwareConfig) -> Bias:
        return Bias(READ, hw.drive.v_read_v, hw.array.v_gate_read_v)

    # ---- the circuit at one bias --------------------------------------------------------
    def solve(self, bias: Bias, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(current A, device voltage V, temperature K), magnitudes, at state ``n``.

        The unknown is the current ``I``: the barrier takes ``v0 asinh(I / (G_b v0))``, the
        bulk and series resistance ``I R``, the heating ``T = T_amb + R_th I V_dev``; a
        safeguarded Newton iteration in ``log I`` matches the transistor's current.
        """
        p = self.hw.device
        m = self.model
        n = np.asarray(n, float)
        rt = m.bulk_resistance(n)
        v0 = p.v0_barrier_v
        amp = bias.amplitude_v
        i_t0, _ = self.curves.current(bias, np.zeros(1) if bias.polarity < 0 else
                                      np.full(1, amp))
        # The current is below what the transistor and the bulk each allow alone.
        hi = np.log(np.minimum(float(i_t0[0]), amp / rt) * (1 + 1e-9) + 1e-30)
        lo = np.full(n.shape, np.log(1e-18))
        hi = np.broadcast_to(hi, n.shape).copy()
        x = 0.5 * (lo + hi)
        temp = np.full(n.shape, p.t_ambient_k)
        for _ in range(80):
            i = np.exp(x)
            gb = m.barrier_conductance(n, temp)
            vdev = v0 * np.arcsinh(i / (gb * v0)) + i * rt
            ddev = v0 / np.sqrt(i * i + (gb * v0) ** 2) + rt  # dV_dev/dI at this T
            if bias.polarity < 0:
                it, slope = self.curves.current(bias, vdev)
                f = i - it
                df = 1.0 - slope * ddev
            else:
                vm = np.interp(i, self.curves.currents[bias], self.curves.vm, right=1e3)
                s = np.interp(vm, self.curves.vm, self.curves.slopes[bias])
                f = vdev + vm - amp
                df = ddev + 1.0 / np.maximum(s, 1e-12)
            lo = np.where(f < 0, x, lo)
            hi = np.where(f > 0, x, hi)
            step = x - f / (df * i)
            new = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
            temp_new = p.t_ambient_k + p.r_th_k_w * i * vdev
            done = np.all(np.abs(new - x) < 1e-9) and np.all(np.abs(temp_new - temp) < 1e-4)
            x, temp = new, temp_new
            if done:
                break
        return self._polish(bias, n, rt, x, temp)

    def _polish(self, bias: Bias, n: np.ndarray, rt: np.ndarray, x: np.ndarray,
                temp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Newton on current and temperature together from the bracketed solution: the
        bracket above holds for one temperature, so its answer can be stale by the last
        heating updates (or, where the heating runs high, not settled); this makes the
        result a smooth function of the parameters (what a fit's finite differences
        need)."""
        p = self.hw.device
        m = self.model
        v0 = p.v0_barrier_v
        amp = bias.amplitude_v
        dlng_dt = (p.phi_b0_ev - p.alpha_b_ev * n ** 0.25) / K_B_EV  # d ln G_b / dT = this/T^2
        for _ in range(_POLISH_STEPS):
            i = np.exp(x)
            gb = m.barrier_conductance(n, temp)
            u = i / (gb * v0)
            vdev = v0 * np.arcsinh(u) + i * rt
            dv_di = v0 / np.sqrt(i * i + (gb * v0) ** 2) + rt
            dv_dt = -v0 * u / np.sqrt(1 + u * u) * dlng_dt / temp ** 2
            if bias.polarity < 0:
                it, slope = self.curves.current(bias, vdev)
                f1 = i - it
                a11, a12 = i * (1.0 - slope * dv_di), -slope * dv_dt
            else:
                vm = np.interp(i, self.curves.currents[bias], self.curves.vm, right=1e3)
                s = np.maximum(np.interp(vm, self.curves.vm, self.curves.slopes[bias]), 1e-12)
                f1 = vdev + vm - amp
                a11, a12 = i * (dv_di + 1.0 / s), dv_dt
            f2 = temp - p.t_ambient_k - p.r_th_k_w * i * vdev
            a21 = -p.r_th_k_w * i * (vdev + i * dv_di)
            a22 = 1.0 - p.r_th_k_w * i * dv_dt
            det = a11 * a22 - a12 * a21
            dx = (f1 * a22 - a12 * f2) / det
            dtemp = (a11 * f2 - a21 * f1) / det
            x, temp = x - dx, temp - dtemp
            if np.all(np.abs(dx) < 1e-14) and np.all(np.abs(dtemp) < 1e-9):
                break
        else:
            if not (np.all(np.abs(dx) < 1e-10) and np.all(np.abs(dtemp) < 1e-6)):
                raise SimulatorError(f"the cell's bias {bias} did not converge in the numpy "
                                     "reference", netlist="cell_reference")
        i = np.exp(x)
        gb = m.barrier_conductance(n, temp)
        vdev = v0 * np.arcsinh(i / (gb * v0)) + i * rt
        return i, vdev, temp

    def _read_table(self) -> np.ndarray:
        i, _, _ = self.solve(self.read_bias(self.hw), self.grid)
        g = i / self.hw.drive.v_read_v
        if np.any(np.diff(g) <= 0):
            raise SimulatorError("the cell's read conductance is not monotonic in the state",
                                 netlist="cell_reference")
        return g

    def pulse_rate(self, bias: Bias, width_s: float) -> np.ndarray:
        """State change per pulse, per unit of ``kc kd W``, on :attr:`grid` (signed)."""
        key = (bias, float(width_s))
        if key not in self._pulse_rates:
            i, vdev, temp = self.solve(bias, self.grid)
            vsw = vdev - i * self.hw.device.r_series_ohm
            rate = self.model.hop_rate(bias.polarity, bias.polarity * vsw, temp)
            self._pulse_rates[key] = rate * (width_s - 2 * self.hw.drive.t_edge_s)
        return self._pulse_rates[key]

    # ---- reads --------------------------------------------------------------------------
    def read_conductance(self, n: np.ndarray) -> np.ndarray:
        """Cell read conductance, S, at state ``n`` (read heating included)."""
        return np.interp(n, self.grid, self._read)

    def state_for(self, g_s: np.ndarray) -> np.ndarray:
        """The state whose cell read conductance is ``g_s`` (clipped to the grid)."""
        return np.interp(g_s, self._read, self.grid)

    # ---- trains -------------------------------------------------------------------------
    def trains(self, bias_index: np.ndarray, biases: Sequence[tuple[Bias, float]],
               n0: np.ndarray, *, kd: np.ndarray, wd: np.ndarray,
               kc: np.ndarray | None = None,
               rate_scale: np.ndarray | None = None) -> np.ndarray:
        """States of ``D`` devices before their first pulse and after each of ``P`` steps.

        ``bias_index`` (D, P) picks each step's ``(bias, width)`` from ``biases``; -1 is a
        step without a pulse (a repeated read, or padding). ``kc`` (D, P) defaults to 1;
        ``rate_scale`` (one per entry of ``biases``, default 1) multiplies that bias's rate.
        Returns (D, P + 1).
        """
        bias_index = np.asarray(bias_index, int)
        d, steps = bias_index.shape
        table = np.zeros((len(biases) + 1, self.grid.size))
        polarity = np.zeros(len(biases) + 1)
        for k, (bias, width) in enumerate(biases):
            table[k] = self.pulse_rate(bias, width)
            if rate_scale is not None:
                table[k] *= rate_scale[k]
            polarity[k] = bias.polarity
        idx = np.where(bias_index < 0, len(biases), bias_index)
        kc = np.ones((d, steps)) if kc is None else np.asarray(kc, float)
        n = np.asarray(n0, float).copy()
        kd = np.asarray(kd, float)
        wd = np.asarray(wd, float)
        g0, dg = self.grid[0], self.grid[1] - self.grid[0]
        top = self.grid.size - 2
        model = self.model
        lo_bound, hi_bound = model.window(wd)
        out = np.empty((d, steps + 1))
        out[:, 0] = n
        h = 1.0 / _SUBSTEPS

        for s in range(steps):
            row = table[idx[:, s]]
            setting = polarity[idx[:, s]] > 0
            scale = kc[:, s] * kd

            def f(x: np.ndarray) -> np.ndarray:
                u = (x - g0) / dg
                j = np.clip(u.astype(int), 0, top)
                t = np.clip(u - j, 0.0, 1.0)
                r = np.take_along_axis(row, j[:, None], 1)[:, 0] * (1 - t) \
                    + np.take_along_axis(row, j[:, None] + 1, 1)[:, 0] * t
                xs = np.maximum(x, 1e-3)
                w = np.where(setting, model.window_factor(1, xs, wd),
                             model.window_factor(-1, xs, wd))
                return scale * r * w

            for _ in range(_SUBSTEPS):
                k1 = f(n)
                k2 = f(n + 0.5 * h * k1)
                k3 = f(n + 0.5 * h * k2)
                k4 = f(n + h * k3)
                n = n + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            n = np.clip(n, lo_bound, hi_bound)
            out[:, s + 1] = n
        return out
