"""Bulk-switching RRAM compact model as ngspice subcircuits (config in, SPICE text out).

The model follows the structure of the JART VCM v1b model (a Schottky/tunnel-type barrier in
series with a vacancy-doped oxide whose resistance depends on the vacancy concentration,
Joule heating, and field- and temperature-accelerated ion hopping) adapted to an
*area-dependent* (bulk, non-filamentary) switching device: the state ``N`` is the mean
oxygen-vacancy concentration of the whole switching bulk, so currents scale with the device
area and switching is gradual. Units: SI, except ``N`` in 1e26 m^-3.

Equations (the numpy reference in ``circuitsim.reference`` implements the same ones)::

    V_T       = k_B T / q                                   thermal voltage
    T         = T_amb + dT,   C_th d(dT)/dt = P - dT / R_th,   P = I V(te, be)
    G_b(N, T) = A j_b exp(-(phi_b0 - alpha_b N^(1/4)) / V_T)        barrier conductance
    I         = G_b v0 sinh(V_b / v0)                       tunnel/Schottky barrier, te -> m
              = V_m / (R_bulk(N) + R_s),  R_bulk = L / (z q mu N A)   bulk + series, m -> be
    V_sw      = V(te, be) - I R_s                           voltage across the oxide
    dN/dt     = k_c k_d nu_set   exp(-Ea_set / V_T)   sinh(z a V_sw / (2 L V_T)) (1 - (N/N_max)^p_set)   V_sw > 0
              = k_c k_d nu_reset exp(-Ea_reset / V_T) sinh(z a V_sw / (2 L V_T)) (1 - (N_min/N)^p_reset) V_sw < 0

Positive ``V(te, be)`` (SET) drives vacancies into the bulk and raises ``N`` and the
conductance; negative voltage (RESET) lowers them. The window factors vanish at the bounds,
and are clipped at zero so the state never leaves ``[N_min, N_max]`` (smooth bounds).
``k_c`` is a cycle-to-cycle multiplier applied from a node (one log-normal draw per pulse),
``k_d`` a device-to-device multiplier, and ``w_d`` scales ``N_min`` and ``N_max``
(device-to-device window spread).

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

__all__ = ["device_library", "small_signal_conductance", "K_B_EV", "Q_E", "K_B"]

Q_E = 1.602176634e-19  # elementary charge, C
K_B = 1.380649e-23  # Boltzmann constant, J/K
K_B_EV = K_B / Q_E  # Boltzmann constant, eV/K

_SINH_CLAMP = 50.0
_DIODE_T_K = 300.15  # temperature at which the frozen model's barrier diodes are evaluated


def _conduction(p: DeviceParams, n: str, temp: str) -> tuple[str, str]:
    """B-source expressions of the barrier and bulk branch currents for state ``n``."""
    area = p.area_nm2 * 1e-18
    length = p.thickness_nm * 1e-9
    # R_bulk = L / (z q mu N A), N in 1e26 m^-3
    rb_coef = length / (p.z_vo * Q_E * p.mobility_m2_vs * 1e26 * area)
    gb0 = area * p.j_b_s_m2
    vt = f"({K_B_EV:.10g}*({temp}))"
    barrier = (
        f"{gb0:.10g}*exp(-({p.phi_b0_ev:.10g}-{p.alpha_b_ev:.10g}*pow({n},0.25))/{vt})"
        f"*{p.v0_barrier_v:.10g}"
        f"*sinh(min(max(V(te,m)/{p.v0_barrier_v:.10g},-{_SINH_CLAMP}),{_SINH_CLAMP}))"
    )
    bulk = f"V(m,be)/({rb_coef:.10g}/({n})+{p.r_series_ohm:.10g})"
    return barrier, bulk


def _thermal(p: DeviceParams, bulk_current: str, dynamic: bool) -> list[str]:
    """Joule heating: node ``th`` holds the temperature rise in K."""
    if p.r_th_k_w == 0.0:
        return ["Vth th 0 0"]
    lines = [
        f"Bheat 0 th I={{abs(V(te,be)*({bulk_current}))}}",
        f"Rth th 0 {p.r_th_k_w:.10g}",
    ]
    if dynamic:
        lines.append(f"Cth th 0 {p.tau_th_s / p.r_th_k_w:.10g}")
    return lines


def _rate(p: DeviceParams, n: str, bulk_current: str, temp: str) -> str:
    length = p.thickness_nm * 1e-9
    vt = f"({K_B_EV:.10g}*({temp}))"
    field = p.z_vo * p.hop_distance_nm * 1e-9 / (2.0 * length)
    vsw = f"(V(te,be)-({bulk_current})*{p.r_series_ohm:.10g})"
    arg = f"min(max({field:.10g}*{vsw}/{vt},-{_SINH_CLAMP}),{_SINH_CLAMP})"
    nmax = f"({p.n_max:.10g}*wd)"
    nmin = f"({p.n_min:.10g}*wd)"
    set_rate = (f"{p.nu_set_hz:.10g}*exp(-{p.ea_set_ev:.10g}/{vt})*sinh({arg})"
                f"*max(0,1-pow({n}/{nmax},{p.p_window_set:.10g}))")
    reset_rate = (f"{p.nu_reset_hz:.10g}*exp(-{p.ea_reset_ev:.10g}/{vt})*sinh({arg})"
                  f"*max(0,1-pow({nmin}/{n},{p.p_window_reset:.10g}))")
    return f"V(kc)*kd*({vsw}>0 ? {set_rate} : {reset_rate})"


def device_library(p: DeviceParams) -> str:
    """SPICE text defining ``rram_dyn`` and ``rram_frozen`` for the given parameters."""
    temp = f"({p.t_ambient_k:.10g}+V(th))"
    header = [
        "* ---- bulk-switching RRAM compact model (netlists/device.py) ----",
        f"* area {p.area_nm2:g} nm^2, thickness {p.thickness_nm:g} nm, "
        f"N in [{p.n_min:g}, {p.n_max:g}] 1e26 m^-3, pristine N = {p.n_init:g}",
    ]

    # The state is floored at a small positive value inside the expressions so that their
    # derivatives exist at every node voltage ngspice may try while iterating.
    state = "max(V(x),1e-3)"
    barrier, bulk = _conduction(p, state, temp)
    dyn = [
        f".subckt rram_dyn te be kc params: n0={p.n_init:.10g} kd=1 wd=1",
        "* state N (1e26 m^-3) on a 1 F capacitor; needs .tran ... uic",
        "Cx x 0 1 IC={n0}",
        f"Bx 0 x I={{{_rate(p, state, bulk, temp)}}}",
        f"Bbar te m I={{{barrier}}}",
        f"Bblk m be I={{{bulk}}}",
        *_thermal(p, bulk, dynamic=True),
        ".ends rram_dyn",
    ]

    # Frozen state, isothermal at T_amb. The barrier's G_b v0 sinh(V/v0) is written as two
    # antiparallel ideal diodes, 2 Is sinh(V/(N V_T)) with N V_T = v0 and Is = G_b v0 / 2:
    # the same function, evaluated by ngspice's compiled diode model instead of a behavioural
    # expression (half the load time of a large tile). The diodes' own temperature is pinned
    # (tnom = temp = 27 C) so that N V_T = v0 whatever the circuit temperature; their gmin
    # (1e-12 S) is six orders below the device's conductance. Per-instance constants are
    # evaluated once at parse time (.param inside the subcircuit).
    area = p.area_nm2 * 1e-18
    length = p.thickness_nm * 1e-9
    rb_coef = length / (p.z_vo * Q_E * p.mobility_m2_vs * 1e26 * area)
    vt_amb = K_B_EV * p.t_ambient_k
    vt_diode = K_B_EV * _DIODE_T_K
    frozen = [
        f".model rram_barrier d is=1 n={p.v0_barrier_v / vt_diode:.10g} rs=0 cjo=0 "
        f"tnom={_DIODE_T_K - 273.15:.10g}",
        f".subckt rram_frozen te be params: n={p.n_init:.10g}",
        "* state held fixed at n (1e26 m^-3), isothermal at T_amb: for .op/.dc/read solves",
        f".param is_b={{0.5*{area * p.j_b_s_m2 * p.v0_barrier_v:.10g}"
        f"*exp(-({p.phi_b0_ev:.10g}-{p.alpha_b_ev:.10g}*pwr(n,0.25))/{vt_amb:.10g})}}",
        f".param rbulk={{{rb_coef:.10g}/n+{p.r_series_ohm:.10g}}}",
        f"Dfw te m rram_barrier area={{is_b}} temp={_DIODE_T_K - 273.15:.10g}",
        f"Drv m te rram_barrier area={{is_b}} temp={_DIODE_T_K - 273.15:.10g}",
        "Rblk m be {rbulk}",
        ".ends rram_frozen",
    ]
    return "\n".join(header + dyn + frozen) + "\n"


def small_signal_conductance(p: DeviceParams, n: np.ndarray) -> np.ndarray:
    """Zero-bias conductance (S) of the frozen device at ``T_amb``: ``1/(1/G_b + R_bulk + R_s)``.

    Exact for ``V -> 0`` (the barrier's ``v0 sinh(V/v0)`` is ``V`` there); a 0.1 V read is
    0.05-0.2% above it. Used for initial guesses (``.nodeset``), not as a model.
    """
    n = np.asarray(n, dtype=float)
    area = p.area_nm2 * 1e-18
    length = p.thickness_nm * 1e-9
    rb = length / (p.z_vo * Q_E * p.mobility_m2_vs * 1e26 * area) / n + p.r_series_ohm
    gb = area * p.j_b_s_m2 * np.exp(-(p.phi_b0_ev - p.alpha_b_ev * n ** 0.25)
                                    / (K_B_EV * p.t_ambient_k))
    return 1.0 / (1.0 / gb + rb)
