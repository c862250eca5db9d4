"""Tile operations, energy and latency of one image through a model on the module.

Tile operations are counted from the model's own layers, mapped as ``training.analog`` maps
them: a weight matrix (out x in; a convolution's is out x in_channels * kh * kw, its input
unfolded into one patch vector per output position) takes ``ceil(in / rows)`` x
``ceil(out / (cols / 2))`` tiles (two devices a weight, a differential pair of columns),
and every input vector is read by every one of them: one tile operation per tile per
vector, two when the layer's input has negative values (the negated part takes a second
read). The first convolution of a CIFAR-10 model sees normalized pixels, so it reads
twice; every other layer's input follows a ReLU. Every tile operation is counted as a whole
tile's (the paper's count), also where a layer uses only part of its last tiles.

Latency: the layers run one after another; within a layer all its tiles read the same
vector at once and the vectors (output positions) follow each other, so a layer takes
``vectors * reads * t_op``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from calibration.energy_model import TileOperation
from training.models import DEFAULT_INPUT_SHAPES, build_model

__all__ = ["LayerOps", "PAPER_TABLE2", "count_tile_ops", "image_figures"]

#: Wu et al. 2023, Table 2 and the text: per image, and per tile VMM.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "lenet": {"image_energy_uj": 1.9, "image_latency_ms": 0.46, "devices": 6.4e3,
              "tile_ops": 707},
    "vgg8": {"image_energy_uj": 23.0, "image_latency_ms": 1.94, "devices": 1.1e6,
             "tile_ops": 7713},
    "resnet18": {"image_energy_uj": 240.0, "image_latency_ms": 4.90, "devices": 22.3e6,
                 "tile_ops": 81922},
}
PAPER_VMM = {"vmm_energy_nj_64x64": 2.66, "vmm_energy_nj_256x64": 2.93, "tops_per_w": 3.08,
             "crossbar_fraction_below": 0.02}

#: Models whose input is normalized to zero mean (signed), by name.
_SIGNED_INPUT = {"lenet": False, "vgg8": True, "resnet18": True}


@dataclass(frozen=True)
class LayerOps:
    """One analog layer of a model: its matrix, its tiles and its reads per image."""

    name: str
    in_features: int
    out_features: int
    vectors: int
    reads: int
    tile_grid: tuple[int, int]

    @property
    def tiles(self) -> int:
        return self.tile_grid[0] * self.tile_grid[1]

    @property
    def tile_ops(self) -> int:
        return self.vectors * self.reads * self.tiles

    @property
    def sequential_ops(self) -> int:
        """Tile operations one after another (the tiles of the layer in parallel)."""
        return self.vectors * self.reads


def count_tile_ops(model: str, rows: int, cols: int) -> list[LayerOps]:
    """Every ``Conv2d`` and ``Linear`` of ``model`` (its native input) on tiles of
    ``rows`` x ``cols``, in the order one image passes them."""
    net = build_model(model)
    pairs = cols // 2
    found: list[LayerOps] = []
    names = {m: n for n, m in net.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * math.prod(module.kernel_size)
            vectors = output.shape[-1] * output.shape[-2]
            in_f, out_f = k, module.out_channels
        else:
            vectors, in_f, out_f = 1, module.in_features, module.out_features
        reads = 2 if bool((x < 0).any()) else 1
        found.append(LayerOps(names[module], in_f, out_f, vectors, reads,
                              (math.ceil(in_f / rows), math.ceil(out_f / pairs))))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    shape = DEFAULT_INPUT_SHAPES[model]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, *shape), generator=gen) if _SIGNED_INPUT[model] \
        else torch.rand((1, *shape), generator=gen)
    net.eval()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return found


def image_figures(model: str, op: TileOperation) -> dict[str, Any]:
    """Per image through ``model``: tile operations, devices, energy and latency, by layer."""
    layers = count_tile_ops(model, op.rows, op.cols)
    tile_ops = sum(layer.tile_ops for layer in layers)
    sequential = sum(layer.sequential_ops for layer in layers)
    return {
        "tile_ops": tile_ops,
        "tiles": sum(layer.tiles for layer in layers),
        "devices": sum(layer.tiles for layer in layers) * op.rows * op.cols,
        "weight_devices": sum(2 * layer.in_features * layer.out_features for layer in layers),
        "image_energy_uj": tile_ops * op.total_j * 1e6,
        "image_latency_ms": sequential * op.latency_s * 1e3,
        "layers": [{"name": layer.name, "in": layer.in_features, "out": layer.out_features,
                    "vectors": layer.vectors, "reads": layer.reads,
                    "tiles": list(layer.tile_grid), "tile_ops": layer.tile_ops}
                   for layer in layers],
    }
