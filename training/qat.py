"""Quantization-aware training: the software baseline that knows the chip's levels.

``train --mode qat`` trains in software with every ``nn.Linear`` and ``nn.Conv2d`` weight
fake-quantized to the programmable levels the chip will hold: per layer, ``w_max`` is the
largest weight magnitude (as :func:`training.analog.from_digital` maps a trained model onto
a chip), the levels are ``w_max k / (levels - 1)`` for ``k`` in ``-(levels-1) ..
levels-1`` (a differential pair, each device on one of ``levels``), and in training each
quantized weight gets Gaussian noise of ``noise`` levels rms, redrawn every step (the
injection of the programming error the chip will add). The gradient passes the rounding
straight through to the high-precision weights. A QAT model is then programmed onto a chip
like a float one (``evaluate --fresh-chip``); without a chip it is evaluated with its
quantized weights and no noise.

The layers keep their class's parameters and state-dict keys (``weight``, ``bias``), so a
QAT checkpoint loads into the plain model and maps onto tiles unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from netlists.errors import ConfigError

__all__ = ["fake_quantize", "make_quantization_aware"]


def fake_quantize(w: torch.Tensor, levels: int, noise: float = 0.0) -> torch.Tensor:
    """``w`` on the levels (plus ``noise`` levels rms of Gaussian noise), with the gradient
    of the identity."""
    top = levels - 1
    w_max = w.detach().abs().max()
    step = torch.where(w_max > 0, w_max / top, torch.ones_like(w_max))
    q = torch.clamp(torch.round(w.detach() / step), -top, top) * step
    if noise > 0:
        q = q + noise * step * torch.randn_like(q)
    return w + (q - w.detach())


class _QuantizedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _weight(self), self.bias)


class _QuantizedConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _weight(self), self.bias)


def _weight(layer: nn.Module) -> torch.Tensor:
    return fake_quantize(layer.weight, layer.qat_levels,
                         layer.qat_noise if layer.training else 0.0)


def _quantized(layer: nn.Module) -> nn.Module | None:
    """The quantization-aware twin of ``layer`` (sharing its parameters), or None."""
    if type(layer) is nn.Linear:
        twin: nn.Module = _QuantizedLinear(layer.in_features, layer.out_features,
                                           bias=layer.bias is not None, device="meta")
    elif type(layer) is nn.Conv2d and layer.groups == 1:
        twin = _QuantizedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation, bias=layer.bias is not None,
                                padding_mode=layer.padding_mode, device="meta")
    else:
        return None
    twin.weight, twin.bias = layer.weight, layer.bias
    twin.train(layer.training)
    return twin


def make_quantization_aware(model: nn.Module, *, levels: int, noise: float) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` (groups=1: the layers that go on
    tiles) of ``model`` by its quantization-aware twin, in place, sharing the parameters;
    returns the model."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"levels = {levels!r} must be a whole number >= 2", field="levels")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"qat_noise = {noise!r} must be a number >= 0 (levels rms)",
                          field="qat_noise")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            twin = _quantized(child)
            if twin is not None:
                twin.qat_levels, twin.qat_noise = levels, float(noise)
                setattr(parent, name, twin)
    return model
