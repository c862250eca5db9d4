"""What an ADC model provides, and which model a hardware configuration uses.

An ADC model is one class implementing :class:`ADCModelInterface`, registered in
:data:`ADC_MODELS`; :func:`adc_model` hands it to the tile decks (``netlists.array``), the
calibration decks (``netlists.calibration_decks``), the ``adc`` calibration surface, the
ideal reference (``circuitsim.tile``) and the surrogate (``surrogate.tile``).

The contract the decks rely on: a *front-end* subcircuit turns the TIA output of each input
bit into one accumulated voltage ``D`` (pins: input, accumulator, then the clock nets
``phi1 phi2 phir`` of ``netlists.array.ReadTiming``), and a *quantizer* subcircuit converts
``D`` into a code on a node (pins: accumulator, code). What the calibration measures on them
(``calibration/surfaces/adc.py``) is therefore model-independent: the weight of each bit's
sample in ``D`` and ``D``'s offset (front-end), the transition levels of the code over ``D``
(quantizer, swept over :meth:`ADCModelInterface.transfer_span_v`) and the code's spread
under input-referred noise; the surrogate reads those and needs nothing else of the model.

:class:`MultiCycleSamplingADC` is today's only model: the switched-capacitor multi-cycle
front-end and the single conversion of ``netlists.periphery``.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from netlists.config import ADCParams, HardwareConfig
from netlists.errors import ConfigError
from netlists.periphery import (
    ADC_FRONTEND_SUBCKT,
    ADC_QUANTIZER_SUBCKT,
    adc_frontend_subckt,
    adc_quantizer_subckt,
    fmt,
)

__all__ = ["ADCModelInterface", "MultiCycleSamplingADC", "ADC_MODELS", "DEFAULT_ADC_MODEL",
           "adc_model"]


@runtime_checkable
class ADCModelInterface(Protocol):
    """An ADC: its SPICE text and instances, and its ideal transfer (see the module docstring)."""

    params: ADCParams
    #: one code step of the ideal transfer, V of ``D``
    lsb_v: float
    #: the largest code (codes run from 0)
    top_code: int

    def frontend_subckt(self) -> str:
        """SPICE text of the front-end subcircuit."""
        ...

    def quantizer_subckt(self) -> str:
        """SPICE text of the quantizer subcircuit."""
        ...

    def frontend_instance(self, ref: str, vin: str, acc: str) -> str:
        """The instance line of one front-end from node ``vin`` to accumulator ``acc``."""
        ...

    def quantizer_instance(self, ref: str, acc: str, code: str, *, offset_v: float | None = None,
                           inl_lsb: float | None = None) -> str:
        """The instance line of one quantizer; ``offset_v`` / ``inl_lsb`` override the
        configured comparator offset and INL of this instance (both or neither)."""
        ...

    def quantize(self, d_v: object, *, offset_v: object = 0.0, inl_lsb: object = 0.0
                 ) -> np.ndarray:
        """The quantizer's transfer in numpy: int64 codes of accumulated voltages ``d_v``."""
        ...

    def ideal_transitions_v(self) -> np.ndarray:
        """``D`` at which the code reaches ``c = 1 .. top_code`` without offset or INL."""
        ...

    def transfer_span_v(self) -> tuple[float, float]:
        """``(lo, hi)``: the ``D`` range over which the configured quantizer's code goes from
        0 to ``top_code`` (the transfer sweep covers it, with a margin)."""
        ...

    def code_edge_v(self) -> float:
        """One code edge of the configured quantizer without INL, V (the transfer sweep
        places its points half a step off the edges)."""
        ...


class MultiCycleSamplingADC:
    """The multi-cycle sampling ADC: switched-capacitor binary-weighted accumulation of the
    bit samples, then one ``bits``-bit conversion with a comparator offset and a bow INL
    (``netlists.periphery.adc_frontend_subckt`` / ``adc_quantizer_subckt``)."""

    def __init__(self, params: ADCParams) -> None:
        self.params = params
        self.lsb_v = params.v_full_scale_v / 2 ** params.bits
        self.top_code = 2 ** params.bits - 1

    def frontend_subckt(self) -> str:
        return adc_frontend_subckt(self.params)

    def quantizer_subckt(self) -> str:
        return adc_quantizer_subckt(self.params)

    def frontend_instance(self, ref: str, vin: str, acc: str) -> str:
        return f"{ref} {vin} {acc} phi1 phi2 phir {ADC_FRONTEND_SUBCKT}"

    def quantizer_instance(self, ref: str, acc: str, code: str, *, offset_v: float | None = None,
                           inl_lsb: float | None = None) -> str:
        line = f"{ref} {acc} {code} {ADC_QUANTIZER_SUBCKT}"
        if offset_v is None and inl_lsb is None:
            return line
        if offset_v is None or inl_lsb is None:
            raise ConfigError("a quantizer instance takes both offset_v and inl_lsb, or neither")
        return f"{line} voff={fmt(float(offset_v))} inl={fmt(float(inl_lsb))}"

    def quantize(self, d_v: object, *, offset_v: object = 0.0, inl_lsb: object = 0.0
                 ) -> np.ndarray:
        """``clip(floor(D/LSB + 0.5 + offset/LSB + INL(D)), 0, 2^bits - 1)``.

        ``LSB = v_full_scale_v / 2^bits``; ``INL(D) = inl_lsb * 4 u (1 - u)`` with
        ``u = clip(D / v_full_scale_v, 0, 1)``: a bow, zero at both ends, ``inl_lsb`` at
        mid-scale. The same expression as the deck's quantizer B-source. Returns int64.
        """
        d = np.asarray(d_v, dtype=float)
        lsb = self.lsb_v
        u = np.clip(d / self.params.v_full_scale_v, 0.0, 1.0)
        raw = np.floor(d / lsb + 0.5 + np.asarray(offset_v, dtype=float) / lsb
                       + np.asarray(inl_lsb, dtype=float) * 4.0 * u * (1.0 - u))
        return np.clip(raw, 0, self.top_code).astype(np.int64)

    def ideal_transitions_v(self) -> np.ndarray:
        """``(c - 1/2) LSB`` for ``c = 1 .. 2^bits - 1``."""
        return (np.arange(1, 2 ** self.params.bits) - 0.5) * self.lsb_v

    def transfer_span_v(self) -> tuple[float, float]:
        """``[min(0, -offset), max(FS, FS - offset)]``: the comparator offset shifts the
        code edges by ``-offset``; the INL vanishes at both ends."""
        off = self.params.comparator_offset_v
        fs = self.params.v_full_scale_v
        return min(0.0, -off), max(fs, fs - off)

    def code_edge_v(self) -> float:
        """``-offset - LSB / 2``, the edge between codes -1 and 0 of the unclipped transfer."""
        return -self.params.comparator_offset_v - 0.5 * self.lsb_v


#: ADC models by name; a new ADC is one class and one entry here.
ADC_MODELS: dict[str, Callable[[ADCParams], ADCModelInterface]] = {
    "multi_cycle_sampling": MultiCycleSamplingADC,
}
#: The model :func:`adc_model` gives (the configuration has no model selector yet).
DEFAULT_ADC_MODEL = "multi_cycle_sampling"


def adc_model(hw: HardwareConfig | ADCParams, name: str = DEFAULT_ADC_MODEL) -> ADCModelInterface:
    """The ADC model of ``hw`` (or of an ``adc`` block); ``name`` picks one of
    :data:`ADC_MODELS`."""
    try:
        factory = ADC_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown ADC model {name!r}: choose from {sorted(ADC_MODELS)}") \
            from None
    return factory(hw if isinstance(hw, ADCParams) else hw.adc)
