import json
import os

import pytest
import torch
from testing import devices

from trp_kernels.compression import is_decomposable
from trp_kernels.schemes.costs import conv_costs, conv_macs, count_params
from trp_kernels.models import MODELS, create_model, resnet20
from trp_kernels.compression import decomposable_layers, never_decomposed

CIFAR = torch.zeros(1, 3, 32, 32)
IMAGENET = torch.zeros(1, 3, 224, 224)
LAYER_SETS = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "layer_sets.json")


@pytest.mark.parametrize("name, params, macs, example", [
    # Parameters: He et al. 2016 (ResNet-20 0.27 M) and torchvision's ResNet-18/50, exactly.
    # Conv MACs per image: N*C*kh*kw*H_out*W_out summed (ResNet-20 ~41 M, ResNet-50 ~4.1 G).
    ("resnet20", 269_722, 40_550_400, CIFAR),
    ("resnet32", 464_154, 68_861_952, CIFAR),
    ("resnet56", 853_018, 125_485_056, CIFAR),
    ("resnet18", 11_689_512, 1_813_561_344, IMAGENET),
    ("resnet50", 25_557_032, 4_087_136_256, IMAGENET),
])
def test_known_parameter_and_mac_counts(name, params, macs, example):
    model = create_model(name)
    assert count_params(model) == params
    assert conv_macs(model, example) == macs


@pytest.mark.parametrize("name, example", [("resnet20", CIFAR), ("resnet56", CIFAR),
                                           ("resnet18", IMAGENET), ("resnet50", IMAGENET)])
def test_decomposable_convs_are_the_benchmark_layer_sets(name, example):
    """The models are the networks bench/layer_sets.json lists, conv by conv."""
    with open(LAYER_SETS) as f:
        expected = json.load(f)[name]
    model = create_model(name)
    costs = {c.name: c for c in conv_costs(model, example)}
    got = []
    for layer_name, conv in decomposable_layers(model):
        got.append({"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                    "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                    "padding": list(conv.padding),
                    "input_hw": list(costs[layer_name].input_hw)})
    assert got == [{k: layer[k] for k in got[0]} for layer in expected]


@pytest.mark.parametrize("name", list(MODELS))
def test_first_conv_and_classifier_are_never_decomposed(name):
    model = create_model(name)
    assert never_decomposed(model) == ("conv1", "fc")
    assert is_decomposable(model.conv1)
    assert "conv1" not in dict(decomposable_layers(model))
    assert not {"conv1", "fc"} & set(dict(decomposable_layers(model, pointwise=True)))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("strides, hw, last", [((1, 2, 2), 32, 8), ((1, 1, 2), 8, 4)])
def test_mobilenet_spends_its_macs_in_1x1_convs(device, strides, hw, last):
    """Inverted residuals at the stage strides; the stem is its only k x k conv of groups 1,
    and the 1x1 convs the pointwise scheme acts on hold over 85% of its MACs."""
    model = create_model("mobilenetv2", num_classes=7, in_channels=1,
                         stage_strides=strides).to(device)
    x = torch.randn(4, 1, hw, hw, device=device)
    assert model(x).shape == (4, 7)
    costs = {c.name: c for c in conv_costs(model, x, linear=True)}
    assert costs["head"].output_hw == (last, last)
    assert [name for name, _ in decomposable_layers(model, skip=())] == ["conv1"]
    pointwise = dict(decomposable_layers(model, scheme="pointwise"))
    assert all(m.kernel_size == (1, 1) for m in pointwise.values()) and len(pointwise) == 22
    share = sum(costs[n].macs for n in pointwise) / sum(c.macs for c in costs.values())
    assert share > 0.85


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("strides, hw, last", [((1, 2, 2), 32, 8), ((1, 1, 2), 8, 4),
                                               ((1, 2, 2), 8, 2)])
def test_cifar_resnet_stage_strides(device, strides, hw, last):
    model = resnet20(num_classes=7, in_channels=1, stage_strides=strides).to(device)
    x = torch.randn(4, 1, hw, hw, device=device)
    assert model(x).shape == (4, 7)
    last_conv = [c for c in conv_costs(model, x) if c.name == "layer3.2.conv2"][0]
    assert last_conv.output_hw == (last, last)


def test_cifar_resnet_rejects_bad_architectures():
    with pytest.raises(ValueError, match="depth"):
        create_model("resnet20").__class__(depth=21)
    with pytest.raises(ValueError, match="stage_strides"):
        resnet20(stage_strides=(1, 3, 2))
    with pytest.raises(ValueError, match="model must be one of"):
        create_model("vgg16")


@pytest.mark.parametrize("device", devices)
def test_imagenet_resnet_forward(device):
    model = create_model("resnet18", num_classes=5).to(device).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64, device=device)).shape == (2, 5)
