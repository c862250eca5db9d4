"""Bulk-switching RRAM compact model as ngspice subcircuits (config in, SPICE text out).

The model follows the structure of the JART VCM v1b model (a Schottky/tunnel-type barrier in
series with a vacancy-doped oxide whose resistance depends on the vacancy concentration,
Joule heating, and field- and temperature-accelerated ion hopping) adapted to an
*area-dependent* (bulk, non-filamentary) switching device: the state ``N`` is the mean
oxygen-vacancy concentration of the whole switching bulk, so currents scale with the device
area and switching is gradual. Units: SI, except ``N`` in 1e26 m^-3.

Equations (:class:`BulkSwitchingModel` renders them as SPICE text and evaluates them in
numpy; ``circuitsim.reference`` solves the numpy ones)::

    V_T       = k_B T / q                                   thermal voltage
    T         = T_amb + dT,   C_th d(dT)/dt = P - dT / R_th,   P = I V(te, be)
    G_b(N, T) = A j_b exp(-(phi_b0 - alpha_b N^(1/4)) / V_T)        barrier conductance
    I         = G_b v0 sinh(V_b / v0)                       tunnel/Schottky barrier, te -> m
              = V_m / (R_bulk(N) + R_s),  R_bulk = L / (z q mu N A)   bulk + series, m -> be
    V_sw      = V(te, be) - I R_s                           voltage across the oxide
    dN/dt     = k_c k_d nu_set   exp(-Ea_set / V_T)   sinh(z a V_sw / (2 L V_T)) (1 - (N/N_max)^p_set)   V_sw > 0
              = k_c k_d nu_reset exp(-Ea_reset / V_T) sinh(z a V_sw / (2 L V_T)) (1 - (N_min/N)^p_reset) V_sw < 0
              + k_d nu_ret exp(-Ea_ret / V_T) (N_init - N)                  relaxation, at any bias

Positive ``V(te, be)`` (SET) drives vacancies into the bulk and raises ``N`` and the
conductance; negative voltage (RESET) lowers them. The window factors vanish at the bounds,
and are clipped at zero so the state never leaves ``[N_min, N_max]`` (smooth bounds).
``k_c`` is a cycle-to-cycle multiplier applied from a node (one log-normal draw per pulse),
``k_d`` a device-to-device multiplier, and ``w_d`` scales ``N_min`` and ``N_max``
(device-to-device window spread).

Relaxation (retention). Without a field the vacancies still hop, thermally activated: the
bulk exchanges them with the reservoir by diffusion (Fick: the net flux is proportional to
the concentration difference) and relaxes towards the concentration it was born with,
``N_init``, with the rate ``k_d nu_ret exp(-Ea_ret / V_T)`` (``nu_ret ~ nu_0 (a / L)^2``, a
phonon attempt frequency times the squared ratio of hop distance to thickness). A programmed
low level therefore drifts up; levels near ``N_init`` barely move. At 300 K the default
relaxation time is 68 days: the lowest of 16 levels drifts up a quarter of a level spacing
in 24 h, the top level 0.03 spacing. During a 100 ns pulse the term moves the state by
< 1e-6 of a level, so it only shows over seconds to years.

Two subcircuits are rendered:

``rram_dyn te be kc params: n0 kd wd``
    The switching device. ``N`` is the voltage of internal node ``x`` on a 1 F capacitor
    whose initial condition is ``n0``: transients that use it need ``.tran ... uic`` (without
    it ngspice silently starts the state at 0). ``kc`` is the node whose voltage is the
    cycle-to-cycle rate multiplier (tie it to a 1 V source for none).
``rram_frozen te be params: n``
    The same conduction with the state held fixed at ``n`` and the temperature at ``T_amb``:
    the variant for operating-point, DC and read solves (an ``.op`` of the dynamic model is
    meaningless because the state capacitor is open). It leaves out self-heating: a read
    dissipates at most ~0.45 uW, which heats the device by ~0.14 K and changes its current
    by < 0.2% (checked in tests/test_device.py), while the thermal node and the
    state-dependent expressions cost more than half the time of a large tile solve. Above
    ~0.5 V, where self-heating matters, use ``rram_dyn`` (or the numpy reference).

ngspice syntax relied on: behavioural ``B`` current sources with ``V()`` of nodes, ``sinh``,
``exp``, ``pow``, ``min``/``max`` (``limit()`` is avoided: ngspice 39 replaced it by 0), the
ternary ``?:`` operator; ``.subckt ... params:`` with brace expressions; capacitor ``IC=``.
``sinh`` arguments are clamped to +-50 because ngspice aborts on a large ``sinh``. The frozen
variant uses the junction diode model (``D`` with ``area=``, ``temp=`` and ``tnom``; a
positional area fails to parse inside a subcircuit) and subcircuit-local ``.param``
expressions.
"""

from __future__ import annotations

import numpy as np

from netlists.config import DeviceParams

__all__ = ["BulkSwitchingModel", "device_library", "K_B_EV", "Q_E", "K_B"]

Q_E = 1.602176634e-19  # elementary charge, C
K_B = 1.380649e-23  # Boltzmann constant, J/K
K_B_EV = K_B / Q_E  # Boltzmann constant, eV/K

_SINH_CLAMP = 50.0
_DIODE_T_K = 300.15  # temperature at which the frozen model's barrier diodes are evaluated
#: floor of the state inside the equations, so that their derivatives exist at every node
#: voltage ngspice may try while iterating (and at N = 0 in numpy)
_STATE_FLOOR = 1e-3


def _sinh(x: np.ndarray) -> np.ndarray:
    return np.sinh(np.clip(x, -_SINH_CLAMP, _SINH_CLAMP))


class BulkSwitchingModel:
    """The bulk-switching compact model of the module docstring, for one ``DeviceParams``.

    One implementation of ``netlists.device_model.DeviceModelInterface``: the SPICE text
    (:meth:`library`), the state bounds and window factor, the variation draws and the
    numpy equations (vectorized over devices with these parameters).
    """

    def __init__(self, params: DeviceParams) -> None:
        self.params = params
        area = params.area_nm2 * 1e-18
        length = params.thickness_nm * 1e-9
        # R_bulk = L / (z q mu N A), N in 1e26 m^-3
        self._rb_coef = length / (params.z_vo * Q_E * params.mobility_m2_vs * 1e26 * area)
        self._gb0 = area * params.j_b_s_m2
        self._field = params.z_vo * params.hop_distance_nm * 1e-9 / (2.0 * length)

    # ---- SPICE text -------------------------------------------------------------------
    def _conduction(self, n: str, temp: str) -> tuple[str, str]:
        """B-source expressions of the barrier and bulk branch currents for state ``n``."""
        p = self.params
        vt = f"({K_B_EV:.10g}*({temp}))"
        barrier = (
            f"{self._gb0:.10g}*exp(-({p.phi_b0_ev:.10g}-{p.alpha_b_ev:.10g}*pow({n},0.25))/{vt})"
            f"*{p.v0_barrier_v:.10g}"
            f"*sinh(min(max(V(te,m)/{p.v0_barrier_v:.10g},-{_SINH_CLAMP}),{_SINH_CLAMP}))"
        )
        bulk = f"V(m,be)/({self._rb_coef:.10g}/({n})+{p.r_series_ohm:.10g})"
        return barrier, bulk

    def _thermal(self, bulk_current: str) -> list[str]:
        """Joule heating: node ``th`` holds the temperature rise in K."""
        p = self.params
        if p.r_th_k_w == 0.0:
            return ["Vth th 0 0"]
        return [
            f"Bheat 0 th I={{abs(V(te,be)*({bulk_current}))}}",
            f"Rth th 0 {p.r_th_k_w:.10g}",
            f"Cth th 0 {p.tau_th_s / p.r_th_k_w:.10g}",
        ]

    def _rate_text(self, n: str, bulk_current: str, temp: str) -> str:
        p = self.params
        vt = f"({K_B_EV:.10g}*({temp}))"
        vsw = f"(V(te,be)-({bulk_current})*{p.r_series_ohm:.10g})"
        arg = f"min(max({self._field:.10g}*{vsw}/{vt},-{_SINH_CLAMP}),{_SINH_CLAMP})"
        nmax = f"({p.n_max:.10g}*wd)"
        nmin = f"({p.n_min:.10g}*wd)"
        set_rate = (f"{p.nu_set_hz:.10g}*exp(-{p.ea_set_ev:.10g}/{vt})*sinh({arg})"
                    f"*max(0,1-pow({n}/{nmax},{p.p_window_set:.10g}))")
        reset_rate = (f"{p.nu_reset_hz:.10g}*exp(-{p.ea_reset_ev:.10g}/{vt})*sinh({arg})"
                      f"*max(0,1-pow({nmin}/{n},{p.p_window_reset:.10g}))")
        relax = (f"{p.nu_retention_hz:.10g}*exp(-{p.ea_retention_ev:.10g}/{vt})"
                 f"*({p.n_init:.10g}-{n})")
        return f"kd*(V(kc)*({vsw}>0 ? {set_rate} : {reset_rate})+{relax})"

    def library(self) -> str:
        """SPICE text defining ``rram_dyn`` and ``rram_frozen`` for these parameters."""
        p = self.params
        temp = f"({p.t_ambient_k:.10g}+V(th))"
        header = [
            "* ---- bulk-switching RRAM compact model (netlists/device.py) ----",
            f"* area {p.area_nm2:g} nm^2, thickness {p.thickness_nm:g} nm, "
            f"N in [{p.n_min:g}, {p.n_max:g}] 1e26 m^-3, pristine N = {p.n_init:g}",
        ]

        # The state is floored at a small positive value inside the expressions so that their
        # derivatives exist at every node voltage ngspice may try while iterating.
        state = "max(V(x),1e-3)"  # _STATE_FLOOR
        barrier, bulk = self._conduction(state, temp)
        dyn = [
            f".subckt rram_dyn te be kc params: n0={p.n_init:.10g} kd=1 wd=1",
            "* state N (1e26 m^-3) on a 1 F capacitor; needs .tran ... uic",
            "Cx x 0 1 IC={n0}",
            f"Bx 0 x I={{{self._rate_text(state, bulk, temp)}}}",
            f"Bbar te m I={{{barrier}}}",
            f"Bblk m be I={{{bulk}}}",
            *self._thermal(bulk),
            ".ends rram_dyn",
        ]

        # Frozen state, isothermal at T_amb. The barrier's G_b v0 sinh(V/v0) is written as two
        # antiparallel ideal diodes, 2 Is sinh(V/(N V_T)) with N V_T = v0 and Is = G_b v0 / 2:
        # the same function, evaluated by ngspice's compiled diode model instead of a
        # behavioural expression (half the load time of a large tile). The diodes' own
        # temperature is pinned (tnom = temp = 27 C) so that N V_T = v0 whatever the circuit
        # temperature; their gmin (1e-12 S) is six orders below the device's conductance.
        # Per-instance constants are evaluated once at parse time (.param inside the
        # subcircuit).
        vt_amb = K_B_EV * p.t_ambient_k
        vt_diode = K_B_EV * _DIODE_T_K
        frozen = [
            f".model rram_barrier d is=1 n={p.v0_barrier_v / vt_diode:.10g} rs=0 cjo=0 "
            f"tnom={_DIODE_T_K - 273.15:.10g}",
            f".subckt rram_frozen te be params: n={p.n_init:.10g}",
            "* state held fixed at n (1e26 m^-3), isothermal at T_amb: for .op/.dc/read solves",
            f".param is_b={{0.5*{self._gb0 * p.v0_barrier_v:.10g}"
            f"*exp(-({p.phi_b0_ev:.10g}-{p.alpha_b_ev:.10g}*pwr(n,0.25))/{vt_amb:.10g})}}",
            f".param rbulk={{{self._rb_coef:.10g}/n+{p.r_series_ohm:.10g}}}",
            f"Dfw te m rram_barrier area={{is_b}} temp={_DIODE_T_K - 273.15:.10g}",
            f"Drv m te rram_barrier area={{is_b}} temp={_DIODE_T_K - 273.15:.10g}",
            "Rblk m be {rbulk}",
            ".ends rram_frozen",
        ]
        return "\n".join(header + dyn + frozen) + "\n"

    # ---- window and variation ---------------------------------------------------------
    def window(self, wd: object = 1.0) -> tuple[object, object]:
        """``(n_min wd, n_max wd)``: the state bounds of a device whose window draw is ``wd``."""
        return self.params.n_min * wd, self.params.n_max * wd

    def window_factor(self, polarity: int, n: object, wd: object = 1.0) -> np.ndarray:
        """``max(0, 1 - (n / (n_max wd))^p_window_set)`` for SET (``polarity > 0``),
        ``max(0, 1 - (n_min wd / n)^p_window_reset)`` for RESET."""
        p = self.params
        n = np.asarray(n, float)
        if polarity > 0:
            return np.maximum(0.0, 1.0 - (n / (p.n_max * wd)) ** p.p_window_set)
        return np.maximum(0.0, 1.0 - (p.n_min * wd / n) ** p.p_window_reset)

    def draw_device(self, rng: np.random.Generator) -> tuple[float, float]:
        """``kd = exp(d2d_rate_sigma z)``, then ``wd = exp(d2d_window_sigma z')``."""
        p = self.params
        kd = float(np.exp(p.d2d_rate_sigma * rng.standard_normal()))
        wd = float(np.exp(p.d2d_window_sigma * rng.standard_normal()))
        return kd, wd

    def draw_cycle(self, rng: np.random.Generator, n_pulses: int) -> np.ndarray:
        """``kc = exp(c2c_sigma z)``, one per pulse."""
        return np.exp(self.params.c2c_sigma * rng.standard_normal(n_pulses))

    # ---- numpy equations --------------------------------------------------------------
    def bulk_resistance(self, n: object) -> np.ndarray:
        """Bulk plus series resistance, ohm."""
        return self._rb_coef / np.asarray(n, float) + self.params.r_series_ohm

    def barrier_conductance(self, n: object, temp_k: object) -> np.ndarray:
        """Small-signal conductance ``G_b`` of the barrier, S."""
        p = self.params
        vt = K_B_EV * np.asarray(temp_k, float)
        return self._gb0 * np.exp(-(p.phi_b0_ev - p.alpha_b_ev * np.asarray(n, float) ** 0.25)
                                  / vt)

    def small_signal_conductance(self, n: object) -> np.ndarray:
        """Zero-bias conductance (S) of the frozen device at ``T_amb``:
        ``1/(1/G_b + R_bulk + R_s)``.

        Exact for ``V -> 0`` (the barrier's ``v0 sinh(V/v0)`` is ``V`` there); a 0.1 V read
        is 0.05-0.2% above it. Used for initial guesses (``.nodeset``), not as a model.
        """
        n = np.asarray(n, dtype=float)
        gb = self.barrier_conductance(n, self.params.t_ambient_k)
        return 1.0 / (1.0 / gb + self.bulk_resistance(n))

    def current_at(self, v: object, n: object, temp_k: object) -> np.ndarray:
        """Device current at a given temperature, A (barrier/bulk split solved exactly)."""
        v, n, temp_k = np.broadcast_arrays(*(np.asarray(a, float) for a in (v, n, temp_k)))
        gb = self.barrier_conductance(n, temp_k)
        rt = self.bulk_resistance(n)
        v0 = self.params.v0_barrier_v
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

    def hop_rate(self, polarity: int, vsw: object, temp_k: object) -> np.ndarray:
        """The rate of the state equation before the window factor and the multipliers,
        (1e26 m^-3)/s: ``nu exp(-Ea / V_T) sinh(z a V_sw / (2 L V_T))`` with the SET
        (``polarity > 0``) or RESET constants; its sign is that of ``vsw``."""
        p = self.params
        vt = K_B_EV * np.asarray(temp_k, float)
        s = _sinh(self._field * np.asarray(vsw, float) / vt)
        if polarity > 0:
            return p.nu_set_hz * np.exp(-p.ea_set_ev / vt) * s
        return p.nu_reset_hz * np.exp(-p.ea_reset_ev / vt) * s

    def relaxation_rate(self, n: object, temp_k: object, kd: object = 1.0) -> np.ndarray:
        """The zero-bias part of dN/dt, (1e26 m^-3)/s: ``kd nu_ret exp(-Ea_ret / V_T)
        (n_init - n)`` (diffusion towards the pristine state)."""
        p = self.params
        vt = K_B_EV * np.asarray(temp_k, float)
        n = np.maximum(np.asarray(n, float), _STATE_FLOOR)
        return kd * p.nu_retention_hz * np.exp(-p.ea_retention_ev / vt) * (p.n_init - n)

    def rate(self, v: object, n: object, i: object, temp_k: object, *,
             kc: float = 1.0, kd: float = 1.0, wd: float = 1.0) -> np.ndarray:
        """dN/dt in (1e26 m^-3)/s: switching plus relaxation."""
        vsw = np.asarray(v, float) - np.asarray(i, float) * self.params.r_series_ohm
        n = np.maximum(np.asarray(n, float), _STATE_FLOOR)
        up = self.hop_rate(1, vsw, temp_k) * self.window_factor(1, n, wd)
        down = self.hop_rate(-1, vsw, temp_k) * self.window_factor(-1, n, wd)
        return kc * kd * np.where(vsw > 0, up, down) + self.relaxation_rate(n, temp_k, kd)


def device_library(p: DeviceParams) -> str:
    """SPICE text defining ``rram_dyn`` and ``rram_frozen`` for the given parameters."""
    return BulkSwitchingModel(p).library()

