"""SPICE deck of devices left alone after programming: the state's relaxation over time.

Pure function: configuration, initial states and sample times in, a complete ngspice deck out.

Each device is the switching model ``rram_dyn`` with both electrodes on ground (zero bias: a
chip's cells sit unbiased between reads; a read lasts nanoseconds) and its cycle-to-cycle
node on 1 V. What moves the state is the model's zero-bias relaxation (``netlists.device``),
solved by ngspice's transient over seconds to years. The ambient temperature is the deck's:
the library is rendered with ``device.t_ambient_k`` set to it (and without the thermal node:
an unbiased device does not heat itself).

Time is scaled. Every rate of a device model is multiplied by its ``kd`` (the model
interface's contract), so a device with ``kd s`` reaches at time ``t / s`` the state the device
with ``kd`` reaches at ``t``. The deck runs every device with ``kd s`` over ``t / s``, with
``s`` the longest sample time, so that the transient lasts 1 s: ngspice's time-step control
is dimensional and crawls (a step of ~3,500 s, 300,000 steps) over a years-long transient in
real seconds, while the scaled one takes ~500 steps for the same accuracy.

Sample times are forced onto ngspice's time grid: a dummy source ``Vbp`` holds a triangle
PWL with a corner at every sample time, and ngspice puts a breakpoint at every PWL corner, so
the state is solved at exactly those times (no interpolation between distant time points).

Relies on: ``.tran ... uic`` (the state capacitor's ``IC=``), PWL breakpoints, ``.save`` of
subcircuit nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from netlists.config import HardwareConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError
from netlists.periphery import fmt

__all__ = ["RetentionDeck", "render_retention_deck", "state_vector"]

#: Devices per deck at most (each is a handful of behavioural sources).
MAX_DEVICES = 4096


@dataclass(frozen=True)
class RetentionDeck:
    text: str
    times_s: np.ndarray     # the sample times, s, after programming
    time_scale: float       # the transient's time is times_s / time_scale
    devices: int


def state_vector(k: int) -> str:
    """The saved vector that holds device ``k``'s state."""
    return f"v(xd{k}.x)"


def render_retention_deck(hw: HardwareConfig, states: object, times_s: object, *,
                          temperature_k: float, kd: object = 1.0,
                          name: str = "retention") -> RetentionDeck:
    """A transient of ``len(states)`` unbiased devices from ``states`` (1e26 m^-3) at
    ``temperature_k``, sampled at ``times_s`` (increasing, > 0, s). ``kd``: each device's
    rate multiplier (a scalar or one per device)."""
    n0 = np.atleast_1d(np.asarray(states, float))
    kd_v = np.broadcast_to(np.asarray(kd, float), n0.shape)
    t = np.atleast_1d(np.asarray(times_s, float))
    if n0.ndim != 1 or not 1 <= n0.size <= MAX_DEVICES or not np.all(np.isfinite(n0)) \
            or np.any(n0 <= 0):
        raise ConfigError(f"retention deck: states must be 1 to {MAX_DEVICES} positive, "
                          "finite values (1e26 m^-3)")
    if not np.all(np.isfinite(kd_v)) or np.any(kd_v <= 0):
        raise ConfigError("retention deck: kd must be positive and finite")
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or t[0] <= 0 \
            or np.any(np.diff(t) <= 0):
        raise ConfigError("retention deck: times_s must be increasing, positive and finite")
    if not (np.isfinite(temperature_k) and 1.0 <= temperature_k <= 600.0):
        raise ConfigError(f"retention deck: temperature {temperature_k!r} K is outside the "
                          "model's [1, 600] K (device.t_ambient_k)", field="temperature_k")
    # Unbiased, a device dissipates nothing and its temperature rise is exactly 0: the
    # thermal node is left out (its 1 ns time constant would hold ngspice's time step near
    # seconds over a years-long transient).
    hot = replace(hw, device=replace(hw.device, t_ambient_k=float(temperature_k),
                                     r_th_k_w=0.0))
    model = device_model(hot)
    scale = float(t[-1])
    ts = t / scale
    corners = " ".join(f"{fmt(float(tk))} {k % 2}" for k, tk in enumerate(ts, start=1))
    lines = [
        f"{name}: {n0.size} unbiased devices at {fmt(float(temperature_k))} K, "
        f"{t.size} sample times up to {fmt(float(t[-1]))} s, time scaled by 1/{fmt(scale)}",
        ".options klu",
        "* tight step control (the default's charge-based error estimate leaves 3e-3 of",
        "* state error on a 1 F state capacitor); cheap: a few hundred steps",
        ".options reltol=1e-6 trtol=1",
        model.library(),
        "Vkc kc 0 1",
        "* breakpoints: a corner of this PWL at every sample time",
        f"Vbp bp 0 PWL(0 0 {corners})",
        "Rbp bp 0 1",
    ]
    lines.append(f"* every kd times {fmt(scale)}: the transient's 1 s is {fmt(scale)} s")
    lines += [f"Xd{k} 0 0 kc rram_dyn n0={fmt(float(n))} kd={fmt(float(kk) * scale)} wd=1"
              for k, (n, kk) in enumerate(zip(n0, kd_v))]
    saves = [state_vector(k) for k in range(n0.size)]
    lines += [".save " + " ".join(saves[k:k + 16]) for k in range(0, len(saves), 16)]
    lines += [
        "* uic: the state capacitors' IC= set the initial states (see netlists/device.py)",
        f".tran {fmt(float(ts[0]))} 1 0 0.02 uic",
        ".end",
    ]
    return RetentionDeck(text="\n".join(lines) + "\n", times_s=t, time_scale=scale,
                         devices=int(n0.size))
