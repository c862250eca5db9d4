"""What a device model provides, and which model a hardware configuration uses.

A device model is one class (one file) that implements :class:`DeviceModelInterface`; it is
registered in :data:`DEVICE_MODELS` and :func:`device_model` hands it to every consumer:
the decks (its subcircuit text), the numpy reference in ``circuitsim.reference`` (its
equations), the pulse and write-and-verify simulations (its variation draws) and the
surrogate (its window factor). The bulk-switching compact model (``netlists.device``) is
today's only one.

The pin and parameter contract every model's :meth:`~DeviceModelInterface.library` keeps,
because the decks instantiate the subcircuits by these names:

``rram_dyn te be kc params: n0 kd wd``
    the switching device: state ``N`` on internal node ``x`` (a 1 F capacitor with
    ``IC={n0}``, so transients use ``.tran ... uic``), temperature rise on node ``th``;
    ``v(kc)`` is the cycle-to-cycle rate multiplier, ``kd`` the device-to-device rate
    multiplier, ``wd`` the device-to-device scale of the state bounds.
``rram_frozen te be params: n``
    the same conduction with the state held at ``n``: for ``.op``, ``.dc`` and reads.

Variation: a device draws ``kd`` and ``wd`` once (:meth:`~DeviceModelInterface.draw_device`)
and then one ``kc`` per pulse (:meth:`~DeviceModelInterface.draw_cycle`), all from one
generator, in that order (:func:`draw_variation`); replaying a device's pulses with the same
seed therefore reproduces its draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from netlists.config import DeviceParams, HardwareConfig
from netlists.device import BulkSwitchingModel
from netlists.errors import ConfigError

__all__ = ["DeviceModelInterface", "Variation", "draw_variation", "DEVICE_MODELS",
           "DEFAULT_DEVICE_MODEL", "device_model"]


@runtime_checkable
class DeviceModelInterface(Protocol):
    """A memristor model: SPICE text, state bounds, window factor, variation, numpy equations.

    States ``n`` are in the model's own units (for the compact model, 1e26 m^-3); arrays
    broadcast. The numpy equations are what ``circuitsim.reference`` solves (the
    barrier/bulk split, self-heating and the state ODE live there, on top of these).
    """

    #: the configuration block the model reads (thermal and read-noise fields included)
    params: DeviceParams

    def library(self) -> str:
        """SPICE text defining ``rram_dyn`` and ``rram_frozen`` (see the module docstring)."""
        ...

    def window(self, wd: object = 1.0) -> tuple[object, object]:
        """``(n_lo, n_hi)``: the state bounds of a device whose window draw is ``wd``."""
        ...

    def window_factor(self, polarity: int, n: object, wd: object = 1.0) -> np.ndarray:
        """The factor (>= 0) that slows switching towards the upper bound (``polarity > 0``,
        SET) or the lower bound (``polarity < 0``, RESET); zero at and beyond the bound."""
        ...

    def draw_device(self, rng: np.random.Generator) -> tuple[float, float]:
        """Device-to-device draws ``(kd, wd)`` from ``rng`` (called first, once a device)."""
        ...

    def draw_cycle(self, rng: np.random.Generator, n_pulses: int) -> np.ndarray:
        """``n_pulses`` cycle-to-cycle multipliers ``kc`` from ``rng``, one per pulse."""
        ...

    def small_signal_conductance(self, n: object) -> np.ndarray:
        """Zero-bias conductance (S) of the frozen device at ambient temperature."""
        ...

    def current_at(self, v: object, n: object, temp_k: object) -> np.ndarray:
        """Current (A) through the device at voltage ``v`` (te - be), state ``n``, temperature
        ``temp_k``."""
        ...

    def rate(self, v: object, n: object, i: object, temp_k: object, *, kc: float = 1.0,
             kd: float = 1.0, wd: float = 1.0) -> np.ndarray:
        """``dN/dt`` at voltage ``v``, state ``n``, current ``i`` and temperature ``temp_k``
        (switching and relaxation)."""
        ...

    def relaxation_rate(self, n: object, temp_k: object, kd: object = 1.0) -> np.ndarray:
        """The zero-bias part of ``dN/dt`` (retention): what the state does between reads.
        ``kd`` multiplies it as it multiplies every rate, so a device with ``kd`` drifts as
        the nominal one does in ``kd`` times the time."""
        ...


@dataclass(frozen=True)
class Variation:
    """Device-to-device multipliers of one device and its per-pulse cycle-to-cycle draws."""

    kd: float = 1.0
    wd: float = 1.0
    kc: np.ndarray = field(default_factory=lambda: np.ones(0))


def draw_variation(model: DeviceModelInterface, rng: np.random.Generator,
                   n_pulses: int) -> Variation:
    """``kd``, ``wd`` and then ``n_pulses`` values of ``kc``, drawn from ``rng`` in that
    order (the order every simulation of the device keeps)."""
    kd, wd = model.draw_device(rng)
    return Variation(kd=kd, wd=wd, kc=model.draw_cycle(rng, n_pulses))


#: Device models by name; a new model is one class and one entry here.
DEVICE_MODELS: dict[str, Callable[[DeviceParams], DeviceModelInterface]] = {
    "bulk_switching": BulkSwitchingModel,
}
#: The model :func:`device_model` gives (the configuration has no model selector yet).
DEFAULT_DEVICE_MODEL = "bulk_switching"


def device_model(hw: HardwareConfig | DeviceParams, name: str = DEFAULT_DEVICE_MODEL
                 ) -> DeviceModelInterface:
    """The device model of ``hw`` (or of a ``device`` block); ``name`` picks one of
    :data:`DEVICE_MODELS`."""
    try:
        factory = DEVICE_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown device model {name!r}: choose from "
                          f"{sorted(DEVICE_MODELS)}") from None
    return factory(hw if isinstance(hw, DeviceParams) else hw.device)
