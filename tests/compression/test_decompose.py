"""decompose_model and the MAC counter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import trp_kernels as tk
from trp_kernels.schemes import costs
from trp_kernels.compression import is_decomposable
from trp_kernels.schemes.factorization import matrix_to_weight, weight_to_matrix


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=2),     # grouped: left alone
            nn.Conv2d(16, 32, 1),                          # 1x1: left alone
            nn.Conv2d(32, 32, (1, 3), padding=(0, 1)),     # 1x3: decomposable
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_conv_macs_formulas():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    macs, out = costs.conv2d_macs(conv, (32, 30))
    assert out == (16, 15) and macs == 16 * 8 * 9 * 16 * 15
    for scheme in ("channel", "spatial"):
        layer = tk.LowRankConv2d(8, 16, 3, rank=5, stride=2, padding=1, scheme=scheme)
        macs, out = costs.lowrank_macs(layer, (32, 30))
        assert out == (16, 15)
        if scheme == "channel":
            assert macs == 5 * (8 * 9 + 16) * 16 * 15
        else:  # vertical conv at stride (2, 1) keeps the full width: H_mid = 16, W_mid = 30
            assert macs == 5 * 8 * 3 * 16 * 30 + 16 * 5 * 3 * 16 * 15


@pytest.mark.parametrize("kernel, dilation", [((2, 3), 1), (3, 2), ((4, 1), (1, 1)), (3, 1)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_counts_the_real_output(kernel, dilation, padding):
    """'same' with an even dilated kernel pads asymmetrically: the counter must follow PyTorch."""
    conv = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation)
    x = torch.randn(1, 2, 9, 8)
    macs, out = costs.conv2d_macs(conv, (9, 8))
    assert out == tuple(conv(x).shape[-2:])
    assert macs == 3 * 2 * conv.kernel_size[0] * conv.kernel_size[1] * out[0] * out[1]


def test_conv_costs_leave_the_model_untouched():
    model = SmallNet().train()
    bn = model.body[1]
    before = bn.running_mean.clone()
    counted = costs.conv_costs(model, torch.randn(2, 3, 16, 16))
    assert [c.name for c in counted] == ["stem", "body.0", "body.3", "body.4", "body.5"]
    assert model.training and torch.equal(bn.running_mean, before)
    assert counted[2].macs == 16 * 8 * 9 * 8 * 8      # groups divide the input channels


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_decompose_model(scheme):
    torch.manual_seed(0)
    model = SmallNet().eval()
    # Weights of rank 3, so that the decomposition is exact and cheaper than the dense convs
    # (a full-rank factorisation is never cheaper, and such a layer stays a plain conv).
    with torch.no_grad():
        for conv in (model.body[0], model.body[5]):
            M = weight_to_matrix(conv.weight, scheme)
            conv.weight.copy_(matrix_to_weight(tk.lowrank_project(M, max_rank=3).W_low,
                                               conv.weight.shape, scheme))
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    report = tk.decompose_model(model, scheme=scheme, threshold=1e-4, skip=["stem"],
                                example_input=x)
    assert [l.name for l in report.layers] == ["body.0", "body.5"]
    assert isinstance(model.body[0], tk.LowRankConv2d) and isinstance(model.stem, nn.Conv2d)
    assert isinstance(model.body[3], nn.Conv2d) and isinstance(model.body[4], nn.Conv2d)
    assert all(l.rank == 3 and not l.kept_dense for l in report.layers)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
    # per-layer MACs agree with the counter on the models themselves
    before = {c.name: c.macs for c in costs.conv_costs(original, x)}
    after = {c.name: c.macs for c in costs.conv_costs(model, x)}
    for l in report.layers:
        assert (l.macs_before, l.macs_after) == (before[l.name], after[l.name])
    assert report.conv_macs_before == sum(before.values())
    assert report.flops_speedup == pytest.approx(sum(before.values()) / sum(after.values()))
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


def test_is_decomposable():
    assert is_decomposable(nn.Conv2d(3, 4, 3))
    assert is_decomposable(nn.Conv2d(3, 4, (3, 1)))
    assert not is_decomposable(nn.Conv2d(3, 4, 1))
    assert not is_decomposable(nn.Conv2d(4, 4, 3, groups=2))
    assert not is_decomposable(nn.Linear(3, 4))


@pytest.mark.parametrize("scheme", ["tucker2", "decoupled"])
def test_decompose_model_new_formats(scheme):
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    # At full rank no format is cheaper than the conv: every layer stays dense, output unchanged.
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, scheme=scheme, skip=["stem"], example_input=x)
    assert [l.name for l in report.layers] == ["body.0", "body.5"]
    assert all(l.rank == l.full_rank and l.kept_dense for l in report.layers)
    assert all(isinstance(model.get_submodule(l.name), nn.Conv2d) for l in report.layers)
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    # Weights of multilinear rank (2, 2) (so also rank 2 per filter): the decomposition is exact
    # and cheap, so every layer is factorised and the model computes the same outputs.
    with torch.no_grad():
        for name in ("body.0", "body.5"):
            w = model.get_submodule(name).weight
            N, C, kh, kw = w.shape
            core = torch.randn(2, 2, kh, kw)
            w.copy_(torch.einsum("na,abij,cb->ncij", torch.randn(N, 2), core, torch.randn(C, 2)))
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, scheme=scheme, threshold=1e-3, skip=["stem"],
                                example_input=x)
    # decoupled runs its C -> r*N 1x1 conv at the input resolution: on the stride-2 body.0 that
    # costs 2*16*8*16*16 + 2*16*9*8*8 = 83,968 MACs against the conv's 73,728, so it stays dense
    dense = {"body.0"} if scheme == "decoupled" else set()
    assert {l.name for l in report.layers if l.kept_dense} == dense
    assert all(l.rank == ((2, 2) if scheme == "tucker2" else 2) for l in report.layers)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-4)
    after = {c.name: c for c in costs.conv_costs(model, x)}
    for l in report.layers:
        layer = model.get_submodule(l.name)
        if not l.kept_dense:
            assert l.macs_after == after[l.name].macs == costs.lowrank_macs(layer, after[l.name].input_hw)[0]
        else:
            assert l.macs_after == l.macs_before == after[l.name].macs
        assert l.params_after == costs.count_params(layer)
    # rank as a fraction: of both modes for tucker2, or a pair of them
    rank = (0.25, 0.5) if scheme == "tucker2" else 0.5
    report = tk.decompose_model(SmallNet(), scheme=scheme, rank=rank)
    if scheme == "tucker2":
        assert [l.full_rank for l in report.layers] == [(3, 8), (8, 16), (32, 32)]
        assert [l.rank for l in report.layers] == [(1, 4), (2, 8), (8, 16)]
    else:
        assert [l.full_rank for l in report.layers] == [3, 8, 3]
        assert [l.rank for l in report.layers] == [2, 4, 2]


def test_one_batched_svd_per_shape_group_and_mode(monkeypatch):
    """tucker2: one call per mode unfolding of each weight shape; decoupled: one per shape
    (every filter of every layer of that shape)."""
    from trp_kernels.schemes import factorization
    from trp_kernels.models import resnet20

    calls = []
    real = factorization.truncated_svd

    def counting(W, *args, **kwargs):
        calls.append(tuple(W.shape))
        return real(W, *args, **kwargs)

    monkeypatch.setattr(factorization, "truncated_svd", counting)
    model = resnet20(in_channels=1)
    shapes = {tuple(m.weight.shape) for n, m in model.named_modules()
              if is_decomposable(m) and n != "conv1"}
    tk.decompose_model(copy.deepcopy(model), "tucker2", energy=0.9, skip=["conv1"])
    assert len(calls) == 2 * len(shapes) and max(c[0] for c in calls) == 6
    calls.clear()
    tk.decompose_model(copy.deepcopy(model), "decoupled", energy=0.9, skip=["conv1"])
    assert len(calls) == len(shapes)
    assert (6, 16, 16, 9) in calls
