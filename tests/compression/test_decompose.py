"""decompose_model in every scheme (one SchemeCase each, tests/scheme_cases.py): exact on
weights of low rank, the dense fallback, the report against the MAC counter, ranks as caps and
fractions, and arguments that name themselves."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import trp_kernels as tk
from scheme_cases import every_scheme
from small_models import SmallNet
from trp_kernels.schemes import costs
from trp_kernels.schemes.matrix_views import weight_as_conv


@every_scheme
def test_at_full_rank_every_layer_stays_dense(case):
    """No scheme is cheaper than the conv at full rank: the model is left as it was."""
    torch.manual_seed(0)
    model = case.adapt(SmallNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, scheme=case.name, skip=["stem"], example_input=x)
    assert [l.name for l in report.layers] == list(case.small_net_layers)
    assert all(l.rank == l.full_rank and l.kept_dense for l in report.layers)
    assert all(isinstance(model.get_submodule(l.name), (nn.Conv2d, nn.Linear))
               for l in report.layers)
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


@every_scheme
def test_decompose_model(case):
    """Weights the scheme factorises exactly and cheaply: every layer is factorised (or kept
    dense where even that rank costs more), the model computes the same outputs, and the
    report's MACs and parameters are the counter's on the models themselves."""
    torch.manual_seed(0)
    model = case.adapt(SmallNet()).eval()
    with torch.no_grad():
        for name in case.small_net_layers:
            layer = model.get_submodule(name)
            weight, rank = case.low_rank_weight(weight_as_conv(layer.weight).shape)
            layer.weight.copy_(weight.reshape(layer.weight.shape))
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    report = tk.decompose_model(model, scheme=case.name, threshold=1e-4, skip=["stem"],
                                example_input=x)
    assert [l.name for l in report.layers] == list(case.small_net_layers)
    assert type(model.stem) is nn.Conv2d and type(model.body[3]) is nn.Conv2d   # grouped
    untouched = {"body.4"} - set(case.small_net_layers)
    assert all(type(model.get_submodule(name)) is nn.Conv2d for name in untouched)
    assert {l.name for l in report.layers if l.kept_dense} == case.kept_dense_in_small_net
    for l in report.layers:
        assert l.rank == rank
        assert isinstance(model.get_submodule(l.name), (tk.LowRankConv2d, tk.LowRankLinear)) \
            != l.kept_dense
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=case.output_atol)
    # per-layer MACs and parameters agree with the counter on the models themselves (linear
    # layers counted where the scheme acts on them)
    assert report.pointwise == (case.name == "pointwise")
    before = {c.name: c.macs for c in costs.conv_costs(original, x, report.pointwise)}
    after = {c.name: c for c in costs.conv_costs(model, x, report.pointwise)}
    for l in report.layers:
        layer = model.get_submodule(l.name)
        assert (l.macs_before, l.macs_after) == (before[l.name], after[l.name].macs)
        if not l.kept_dense:
            assert l.macs_after == costs.lowrank_macs(layer, after[l.name].input_hw)[0]
        else:
            assert l.macs_after == l.macs_before
        assert l.params_after == costs.count_params(layer)
    assert report.conv_macs_before == sum(before.values())
    assert report.flops_speedup == pytest.approx(
        sum(before.values()) / sum(c.macs for c in after.values()))
    assert "body.0" in str(report) and report.to_dict()["layers"][0]["name"] == "body.0"


def test_decompose_rank_caps_and_fractions():
    model = SmallNet()
    report = tk.decompose_model(copy.deepcopy(model), rank=6)
    assert [l.name for l in report.layers] == ["stem", "body.0", "body.5"]
    assert [l.rank for l in report.layers] == [6, 6, 6]
    report = tk.decompose_model(copy.deepcopy(model), rank=0.25)
    assert [l.full_rank for l in report.layers] == [8, 16, 32]
    assert [l.rank for l in report.layers] == [2, 4, 8]       # ceil(0.25 * full rank)
    report = tk.decompose_model(copy.deepcopy(model), energy=0.5)
    assert all(1 <= l.rank < l.full_rank for l in report.layers)
    assert report.flops_speedup is None and report.params_after < report.params_before


@pytest.mark.parametrize("scheme", ["tucker2", "decoupled"])
def test_rank_fractions_of_the_tensor_schemes(scheme):
    """A fraction of the full rank of both modes for tucker2, or a pair of them."""
    rank = (0.25, 0.5) if scheme == "tucker2" else 0.5
    report = tk.decompose_model(SmallNet(), scheme=scheme, rank=rank)
    if scheme == "tucker2":
        assert [l.full_rank for l in report.layers] == [(3, 8), (8, 16), (32, 32)]
        assert [l.rank for l in report.layers] == [(1, 4), (2, 8), (8, 16)]
    else:
        assert [l.full_rank for l in report.layers] == [3, 8, 3]
        assert [l.rank for l in report.layers] == [2, 4, 2]


def test_decompose_arguments():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="skip"):
        tk.decompose_model(model, skip=["conv9"])
    with pytest.raises(ValueError, match="scheme"):
        tk.decompose_model(model, scheme="cp")
    with pytest.raises(ValueError, match="rank"):
        tk.decompose_model(model, rank=1.5)
    with pytest.raises(ValueError, match="rank"):
        tk.decompose_model(model, rank=0)
    with pytest.raises(TypeError, match="model"):
        tk.decompose_model("resnet20")
    with pytest.raises(ValueError, match="single conv"):
        tk.decompose_model(nn.Conv2d(3, 8, 3))
    circular = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"))
    with pytest.raises(ValueError, match=r"skip=\['0'\]"):
        tk.decompose_model(circular)
    # a failed call replaced nothing
    assert isinstance(model[2], nn.Conv2d)
