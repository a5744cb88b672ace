"""pointwise=True: which layers it adds (1x1 convs and linear layers), the classifier kept dense
by default, a model mixing schemes in decompose_model, budgets and the measured choice, and the
default (False) leaving every result as it was."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from torch import nn

import trp_kernels as tk
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from small_models import SmallNet
from trp_kernels.compression import decomposable_layers, is_pointwise, never_decomposed
from trp_kernels.compression.latency import LatencyMeter, Timing
from trp_kernels.models import mobilenetv2, resnet20
from trp_kernels.schemes import costs


class Mixed(nn.Module):
    """A 3x3 conv, a 1x1 conv, a grouped 1x1 conv, a strided 1x1 conv and two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 48, 1)
        self.grouped = nn.Conv2d(48, 48, 1, groups=4)
        self.down = nn.Conv2d(48, 32, 1, stride=2, bias=False)
        self.hidden = nn.Linear(32, 40)
        self.classifier = nn.Linear(40, 10)

    def forward(self, x):
        x = self.down(torch.relu(self.grouped(self.expand(torch.relu(self.conv(x))))))
        return self.classifier(torch.relu(self.hidden(x.mean((2, 3)))))


def names(layers):
    return [name for name, _ in layers]


def test_which_layers_pointwise_adds():
    model = Mixed()
    assert never_decomposed(model) == ("classifier",)     # its last layer, a linear one
    assert names(decomposable_layers(model)) == ["conv"]
    assert names(decomposable_layers(model, pointwise=True)) == ["conv", "expand", "down",
                                                                 "hidden"]
    assert names(decomposable_layers(model, scheme="pointwise")) == ["expand", "down", "hidden"]
    assert names(decomposable_layers(model, scheme="pointwise", skip=())) == [
        "expand", "down", "hidden", "classifier"]
    assert is_pointwise(nn.Linear(2, 3)) and is_pointwise(nn.Conv2d(2, 3, 1))
    assert not is_pointwise(nn.Conv2d(4, 4, 1, groups=2)) and not is_pointwise(nn.Conv2d(2, 3, 3))
    # the library's models name their classifier; a net of k x k convs keeps nothing dense
    assert never_decomposed(resnet20()) == ("conv1", "fc")
    assert never_decomposed(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))) == ()
    with pytest.raises(ValueError, match="not decomposable"):
        tk.decompose_model(Mixed(), rank=2, layers=["expand"])       # pointwise not asked
    with pytest.raises(ValueError, match="scheme 'pointwise'"):
        tk.decompose_model(Mixed(), scheme="pointwise", rank=2, layers=["conv"])


def test_a_model_mixes_schemes_and_counts_its_linear_layers():
    torch.manual_seed(0)
    model = Mixed().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 12, 12)
    report = tk.decompose_model(model, scheme="spatial", energy=0.7, example_input=x,
                                pointwise=True)
    kinds = {l.name: (l.scheme, type(model.get_submodule(l.name)).__name__)
             for l in report.layers}
    assert kinds == {"conv": ("spatial", "LowRankConv2d"),
                     "expand": ("pointwise", "LowRankConv2d"),
                     "down": ("pointwise", "LowRankConv2d"),
                     "hidden": ("pointwise", "LowRankLinear")}
    assert type(model.classifier) is nn.Linear and type(model.grouped) is nn.Conv2d
    # MACs with the linear layers, every layer at its own rank and resolution
    before = costs.conv_macs(original, x, linear=True)
    assert report.pointwise and report.conv_macs_before == before
    assert report.conv_macs_after == costs.conv_macs(model, x, linear=True) < before
    assert report.layers[2].macs_before == 48 * 32 * 6 * 6              # the strided 1x1 conv
    assert report.to_dict()["pointwise"] is True
    # energy 1 keeps every layer's numerical rank: the same function
    exact = copy.deepcopy(original)
    tk.decompose_model(exact, energy=1.0, pointwise=True, rank_multiple=1)
    torch.testing.assert_close(exact(x), original(x), rtol=1e-4, atol=1e-5)


def test_scheme_pointwise_alone_and_its_rank_arguments():
    model = Mixed()
    report = tk.decompose_model(model, scheme="pointwise", rank=0.25)
    assert [(l.name, l.rank, l.full_rank) for l in report.layers] == [
        ("expand", 4, 16), ("down", 8, 32), ("hidden", 8, 32)]
    assert type(model.conv) is nn.Conv2d
    with pytest.raises(ValueError, match="pair"):
        tk.decompose_model(Mixed(), scheme="tucker2", rank=(2, 3), pointwise=True)
    with pytest.raises(TypeError, match="pointwise"):
        tk.decompose_model(Mixed(), rank=2, pointwise="yes")
    with pytest.raises(ValueError, match="single linear"):
        tk.decompose_model(nn.Linear(3, 4), rank=1)


@pytest.mark.parametrize("scheme", ["channel", "pointwise"])
def test_budget_on_a_mobilenet_counts_and_reaches(scheme):
    """target_speedup over 1x1 convs and the classifier's MACs: reached, and the largest
    reachable speed-up named when it is not."""
    model = mobilenetv2(in_channels=1, stage_strides=(1, 1, 2)).eval()
    x = torch.randn(1, 1, 8, 8)
    report = tk.decompose_model(copy.deepcopy(model), scheme=scheme, target_speedup=3,
                                rank_multiple=4, example_input=x, pointwise=True)
    assert report.flops_speedup >= 3
    assert all(l.kept_dense or l.rank % 4 == 0 or l.rank == l.full_rank for l in report.layers)
    assert report.conv_macs_before == costs.conv_macs(model, x, linear=True)
    with pytest.raises(ValueError, match="largest reachable"):
        tk.decompose_model(copy.deepcopy(model), scheme=scheme, target_speedup=50,
                           example_input=x, pointwise=True)
    # the k x k schemes alone find nothing but the stem, which the model keeps dense
    with pytest.raises(ValueError, match="largest reachable"):
        tk.decompose_model(copy.deepcopy(model), target_speedup=1.5, example_input=x)


class LinearSlowMeter(LatencyMeter):
    """Time = MACs (1 ns each), plus a second for any LowRankLinear: only the convs gain."""

    def __init__(self):
        super().__init__("torch")

    def seconds(self, modules, x):
        return [Timing(1e-9 * costs.conv_macs(m, x, linear=True)
                       + sum(isinstance(l, tk.LowRankLinear) for l in m.modules()), 0.0)
                for m in modules]


def test_the_measured_choice_keeps_a_slower_linear_layer_dense():
    model = Mixed().eval()
    report = tk.decompose_model(model, energy=0.5, pointwise=True, measure=LinearSlowMeter(),
                                example_input=torch.randn(2, 3, 12, 12))
    dense = {l.name for l in report.layers if l.kept_dense}
    assert "hidden" in dense and type(model.hidden) is nn.Linear
    assert isinstance(model.expand, tk.LowRankConv2d)


def test_the_default_leaves_every_result_as_it_was():
    """pointwise=False: the k x k convs alone, and conv MACs without the linear layers."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(1, 3, 16, 16)
    report = tk.decompose_model(copy.deepcopy(model), rank=2, example_input=x)
    assert [l.name for l in report.layers] == ["stem", "body.0", "body.5"]
    assert not report.pointwise
    assert report.conv_macs_before == sum(c.macs for c in costs.conv_costs(model, x)) == \
        costs.conv_macs(model, x) < costs.conv_macs(model, x, linear=True)


def test_imagenet_networks_are_reached_to_85_percent():
    """On pytorchcv's definitions (skipped where it is not installed; no dependency of the
    package): with pointwise=True the default selection reaches at least 85% of the conv +
    linear MACs of the efficient networks and of ResNet-50 (scripts/imagenet_pointwise.py)."""
    pytest.importorskip("pytorchcv")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "imagenet_pointwise.py")
    spec = importlib.util.spec_from_file_location("imagenet_pointwise", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("MobileNetV2", "EfficientNet-B0", "ShuffleNetV2", "ResNet-50"):
        row = script.reach_row(name)
        assert row["reached_pointwise"] >= 0.85 > row["reached_today"] + row["grouped_share"]
        assert row["kxk_share"] + row["pointwise_share"] + row["grouped_share"] == \
            pytest.approx(1.0)
