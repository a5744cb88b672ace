"""LowRankLinear, the pointwise scheme's linear layer: exact decomposition of nn.Linear, the rank
rule against float64 LAPACK, fresh layers, gradients, rank 0, checkpoints of another rank,
conversion to plain linears, inputs with extra dimensions, its MACs, and arguments that name
themselves. (The pointwise scheme's 1x1 convs are LowRankConv2d layers: tests/scheme_cases.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trp_kernels as tk
from testing import devices, dtypes
from trp_kernels.ops.svd import reference_rank
from trp_kernels.schemes import costs


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_at_full_rank_is_exact(device, dtype, bias):
    linear = nn.Linear(7, 11, bias=bias).to(device=device, dtype=dtype)
    layer = tk.LowRankLinear.from_linear(linear)
    assert layer.rank == layer.full_rank == 7
    x = torch.randn(3, 5, 7, device=device, dtype=dtype)      # extra dimensions: rows
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(layer(x), linear(x), rtol=tol, atol=tol)
    torch.testing.assert_close(layer.full_weight(), linear.weight, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.to_linears()(x), linear(x), rtol=tol, atol=tol)
    assert (layer.bias is None) == (linear.bias is None)


@pytest.mark.parametrize("kwargs", [{"energy": 0.7}, {"threshold": 0.2}, {"rank": 3},
                                    {"energy": 0.95, "rank": 4}])
def test_from_linear_follows_the_rank_rule(kwargs):
    linear = nn.Linear(9, 6).double()
    layer = tk.LowRankLinear.from_linear(linear, **kwargs)
    rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
    expected = reference_rank(torch.linalg.svdvals(linear.weight.detach()), **rule)
    assert layer.rank == int(expected)
    U, S, Vh = torch.linalg.svd(linear.weight.detach())
    r = layer.rank
    torch.testing.assert_close(layer.full_weight().detach(), (U[:, :r] * S[:r]) @ Vh[:r])


def test_from_linears_batches_layers_of_one_shape():
    linears = [nn.Linear(8, 5), nn.Linear(8, 5), nn.Linear(4, 5)]
    layers = tk.LowRankLinear.from_linears(linears, energy=0.8, ranks=[2, None, 3])
    assert [l.rank for l in layers] == [min(2, layers[0].rank), layers[1].rank, layers[2].rank]
    assert layers[0].rank <= 2 and layers[2].rank <= 3


def test_fresh_layer_is_a_truncated_default_init():
    torch.manual_seed(0)
    layer = tk.LowRankLinear(24, 12, rank=5)
    assert [tuple(f.shape) for f in layer.factors] == [(5, 24), (12, 5)]
    dense = layer.full_weight().detach()
    assert torch.linalg.matrix_rank(dense) == 5
    bound = 1 / 24 ** 0.5                     # nn.Linear's kaiming-uniform bound
    ratio = float(torch.linalg.norm(dense)) / (dense.numel() * bound ** 2 / 3) ** 0.5
    assert 0.3 < ratio <= 1.1
    assert layer.bias.abs().max() <= bound
    y = layer(torch.randn(4, 24))
    y.sum().backward()
    assert y.shape == (4, 12) and all(p.grad is not None for p in layer.parameters())
    assert repr(layer) == ("LowRankLinear(in_features=24, out_features=12, rank=5/12, "
                           "scheme='pointwise')")
    assert (layer.in_features, layer.out_features) == (24, 12)


def test_gradcheck():
    layer = tk.LowRankLinear(4, 3, rank=2, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    names = ("weight1", "weight2", "bias")

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    params = tuple(getattr(layer, n).detach().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, (x, *params))


def test_rank_zero_is_the_bias():
    layer = tk.LowRankLinear(3, 5, rank=0)
    assert not layer.full_weight().any()
    y = layer(torch.randn(2, 3))
    torch.testing.assert_close(y, layer.bias.expand_as(y))


def test_state_dict_with_other_ranks_resizes():
    source = nn.Sequential(tk.LowRankLinear(6, 8, rank=2), nn.ReLU(),
                           tk.LowRankLinear(8, 4, rank=4, bias=False))
    target = nn.Sequential(tk.LowRankLinear(6, 8, rank=5), nn.ReLU(),
                           tk.LowRankLinear(8, 4, rank=0, bias=False))
    target.load_state_dict(source.state_dict())
    assert [target[0].rank, target[2].rank] == [2, 4]
    x = torch.randn(3, 6)
    torch.testing.assert_close(target(x), source(x))
    bad = source.state_dict()
    bad["0.weight1"] = torch.randn(2, 5)             # another input size, not another rank
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(bad)


def test_macs_count_a_linear_layer_as_a_1x1_conv_on_its_rows():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), tk.LowRankLinear(30, 10, rank=3))
    x = torch.randn(2, 7, 20)                       # 7 rows per sample
    assert costs.conv_costs(model, x) == []          # the papers' conv MACs: none
    dense, lowrank = costs.conv_costs(model, x, linear=True)
    assert (dense.input_hw, dense.macs, dense.params) == ((7, 1), 7 * 20 * 30, 630)
    assert (lowrank.macs, lowrank.params) == (7 * 3 * (30 + 10), 3 * 40 + 10)
    assert costs.factorised_macs(nn.Linear(20, 30), "pointwise", 3, (7, 1)) == 7 * 3 * 50
    assert costs.is_cheaper(nn.Linear(20, 30), "pointwise", 11)
    assert not costs.is_cheaper(nn.Linear(20, 30), "pointwise", 12)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="in_features"):
        tk.LowRankLinear(0, 4, rank=1)
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankLinear(3, 4, rank=4)                 # full rank 3
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankLinear(3, 4, rank=1.0)
    with pytest.raises(TypeError, match="linear"):
        tk.LowRankLinear.from_linear(nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="energy"):
        tk.LowRankLinear.from_linear(nn.Linear(3, 4), energy=0)
    with pytest.raises(ValueError, match="kernel_size"):
        tk.LowRankConv2d(3, 4, 3, rank=1, scheme="pointwise")
    with pytest.raises(ValueError, match="kernel_size"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(3, 4, 3), scheme="pointwise")
