"""Reference models: shapes, parameter counts, which layers are matrix products, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netlists.errors import ConfigError
from training.models import MODEL_NAMES, BasicBlock, build_model

# The counts documented in training/models.py, each summed by hand from its layer table.
PARAMETERS = {"lenet": 5_994, "vgg8": 12_978_058, "resnet18": 11_173_962}
NATIVE = {"lenet": (1, 28, 28), "vgg8": (3, 32, 32), "resnet18": (3, 32, 32)}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_parameter_count(models, name):
    model = models[name]
    assert count(model) == PARAMETERS[name]
    x = torch.randn(2, *NATIVE[name])
    model.train()
    assert model(x).shape == (2, 10)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_only_conv_and_linear_hold_matrix_weights(models, name):
    for module in models[name].modules():
        if not list(module.parameters(recurse=False)):
            continue
        assert isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)), type(module)


def test_lenet_layers():
    model = build_model("lenet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(1, 8, (5, 5)), (8, 16, (5, 5))]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(256, 10)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_vgg8_layers(models):
    model = models["vgg8"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None
               for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(8192, 1024), (1024, 10)]


def test_resnet18_layers(models):
    model = models["resnet18"]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.conv1.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    projected = [name for name, m in model.named_modules()
                 if isinstance(m, BasicBlock) and not isinstance(m.shortcut, nn.Identity)]
    assert projected == ["layer2.0", "layer3.0", "layer4.0"]
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)


def test_num_classes_and_adapted_input_shapes():
    assert build_model("lenet", num_classes=5)(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    lenet_rgb = build_model("lenet", input_shape=(3, 32, 32))
    assert lenet_rgb(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert lenet_rgb.classifier[1].in_features == 400
    assert build_model("lenet", input_shape=(1, 16, 16))(torch.zeros(1, 1, 16, 16)).shape \
        == (1, 10)
    resnet_gray = build_model("resnet18", input_shape=(1, 28, 28))
    assert resnet_gray.conv1.in_channels == 1


def test_unknown_model_lists_the_names():
    with pytest.raises(ConfigError) as excinfo:
        build_model("alexnet")
    text = str(excinfo.value)
    assert "unknown model 'alexnet'" in text
    for name in MODEL_NAMES:
        assert name in text


@pytest.mark.parametrize(("name", "shape", "needed"), [
    ("lenet", (1, 15, 28), "at least 16"),
    ("vgg8", (3, 7, 32), "at least 8"),
])
def test_too_small_inputs_are_refused(name, shape, needed):
    with pytest.raises(ConfigError, match=f"{name} cannot take input_shape.*{needed}"):
        build_model(name, input_shape=shape)


@pytest.mark.parametrize("shape", [(28, 28), (1, 0, 28), (1, 28.0, 28), "1x28x28"])
def test_malformed_input_shape(shape):
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("lenet", input_shape=shape)


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("lenet", num_classes=num_classes)
