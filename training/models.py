"""The reference networks, as plain torch models.

Every matrix product is a standard ``nn.Conv2d`` or ``nn.Linear``, so that a later step can
convert exactly those layers into analog ones; everything else (ReLU, max-pooling,
BatchNorm, average pooling, the residual additions) is digital and stays as it is. Weights
are initialised by torch's defaults from its global generator: seed it for a reproducible
model. :func:`build_model` takes any input shape (channels, height, width) a model can
process; the tables below are for each model's native shape.

``lenet``: LeNet for MNIST (1x28x28), the network trained on the chip. 5,994 parameters.

==========  ===========================  ============  ==========
layer       module                       output        parameters
==========  ===========================  ============  ==========
features.0  Conv2d(1, 8, 5)              8 x 24 x 24   208
features.1  ReLU
features.2  MaxPool2d(2)                 8 x 12 x 12
features.3  Conv2d(8, 16, 5)             16 x 8 x 8    3,216
features.4  ReLU
features.5  MaxPool2d(2)                 16 x 4 x 4
classifier  Flatten, Linear(256, 10)     10            2,570
==========  ===========================  ============  ==========

On C x H x W it takes C input channels and ``16 * ((H-4)//2-4)//2 * ((W-4)//2-4)//2``
features into its Linear layer (3x32x32: 400); H and W must be at least 16.

``vgg8``: the NeuroSim-style VGG-8 for CIFAR-10 (3x32x32). 12,978,058 parameters.
Convolutions are 3x3 with padding 1 and no bias (the BatchNorm after each supplies the
shift); each is followed by a digital BatchNorm2d and ReLU.

============  ========================  ============  ==========
block         modules                   output        parameters
============  ========================  ============  ==========
features      Conv(3, 128)              128 x 32 x32  3,456 + 256 (BN)
              Conv(128, 128), MaxPool   128 x 16 x16  147,456 + 256
              Conv(128, 256)            256 x 16 x16  294,912 + 512
              Conv(256, 256), MaxPool   256 x 8 x 8   589,824 + 512
              Conv(256, 512)            512 x 8 x 8   1,179,648 + 1,024
              Conv(512, 512), MaxPool   512 x 4 x 4   2,359,296 + 1,024
classifier    Flatten, Linear(8192,     1024          8,389,632
              1024), ReLU
              Linear(1024, 10)          10            10,250
============  ========================  ============  ==========

On C x H x W the first Linear layer takes ``512 * (H//8) * (W//8)`` features; H and W must
be at least 8.

``resnet18``: the standard CIFAR ResNet-18 (3x32x32). 11,173,962 parameters.
A 3x3 stem (Conv(3, 64), BatchNorm, ReLU; no max-pool), then four stages of two
:class:`BasicBlock` each, global average pooling and ``fc`` = Linear(512, 10). Every
convolution has no bias and is followed by BatchNorm. A block whose stride or width changes
projects its shortcut with a 1x1 convolution and BatchNorm (``layer2.0``, ``layer3.0``,
``layer4.0``).

==========  ==========================  ============  ==========
stage       blocks                      output        parameters
==========  ==========================  ============  ==========
stem        Conv(3, 64), BN, ReLU       64 x 32 x 32  1,856
layer1      2 x BasicBlock(64), s1      64 x 32 x 32  147,968
layer2      2 x BasicBlock(128), s2     128 x 16 x16  525,568
layer3      2 x BasicBlock(256), s2     256 x 8 x 8   2,099,712
layer4      2 x BasicBlock(512), s2     512 x 4 x 4   8,393,728
avgpool     AdaptiveAvgPool2d(1)        512
fc          Flatten, Linear(512, 10)    10            5,130
==========  ==========================  ============  ==========

Adaptive average pooling lets it take any H and W.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netlists.errors import ConfigError

__all__ = [
    "DEFAULT_INPUT_SHAPES",
    "MODEL_NAMES",
    "VGG8",
    "BasicBlock",
    "LeNet",
    "ResNet18",
    "build_model",
]

#: The names :func:`build_model` accepts.
MODEL_NAMES = ("lenet", "vgg8", "resnet18")

#: Each model's native input shape (channels, height, width).
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "lenet": (1, 28, 28),
    "vgg8": (3, 32, 32),
    "resnet18": (3, 32, 32),
}


class LeNet(nn.Module):
    """LeNet: two 5x5 convolutions with max-pooling, then one fully connected layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *,
                 image_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        h, w = (_lenet_side(s) for s in image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * h * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _lenet_side(size: int) -> int:
    """The side of LeNet's last feature map for an input side ``size`` (< 1: too small)."""
    return ((size - 4) // 2 - 4) // 2


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class VGG8(nn.Module):
    """VGG-8: 128C3-128C3-MP-256C3-256C3-MP-512C3-512C3-MP-FC1024-FC(classes)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *,
                 image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        h, w = (s // 8 for s in image_size)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 128), *_conv_bn_relu(128, 128), nn.MaxPool2d(2),
            *_conv_bn_relu(128, 256), *_conv_bn_relu(256, 256), nn.MaxPool2d(2),
            *_conv_bn_relu(256, 512), *_conv_bn_relu(512, 512), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * h * w, 1024), nn.ReLU(),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (ResNet-18/34)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18: 3x3 stem, BasicBlocks [2, 2, 2, 2] of 64-512 channels."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, *, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.flatten(self.avgpool(out)))


def build_model(name: str, *, num_classes: int = 10,
                input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A freshly initialised model by name (one of :data:`MODEL_NAMES`).

    ``input_shape`` is (channels, height, width) of one sample, e.g. a dataset's
    ``input_shape``; None takes the model's native shape (lenet 1x28x28, vgg8 and resnet18
    3x32x32). A shape the model cannot process raises :class:`ConfigError`.
    """
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}: choose one of {list(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes = {num_classes!r} is out of range: allowed a whole "
                          "number >= 2")
    shape = DEFAULT_INPUT_SHAPES[name] if input_shape is None else _check_shape(input_shape)
    channels, height, width = shape
    if name == "lenet":
        if _lenet_side(height) < 1 or _lenet_side(width) < 1:
            raise ConfigError(f"lenet cannot take input_shape = {shape}: its two 5x5 "
                              "convolutions and 2x2 poolings need a height and width of at "
                              "least 16 pixels")
        return LeNet(channels, num_classes, image_size=(height, width))
    if name == "vgg8":
        if height < 8 or width < 8:
            raise ConfigError(f"vgg8 cannot take input_shape = {shape}: its three 2x2 poolings "
                              "need a height and width of at least 8 pixels")
        return VGG8(channels, num_classes, image_size=(height, width))
    return ResNet18(channels, num_classes)


def _check_shape(input_shape: Any) -> tuple[int, int, int]:
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_shape)
    if not ok:
        raise ConfigError(f"input_shape = {input_shape!r} must be three whole numbers >= 1: "
                          "(channels, height, width)")
    return (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
