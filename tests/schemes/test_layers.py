"""LowRankConv2d in every scheme (one SchemeCase each, tests/scheme_cases.py): exact
decomposition of nn.Conv2d, the rank rule, fresh layers, gradients, rank 0, checkpoints of
another rank, conversion to plain convs, and arguments that name themselves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trp_kernels as tk
from scheme_cases import every_scheme
from testing import devices, dtypes
from trp_kernels.schemes import factorization

CONVS = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=(5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid"),
    # odd geometries: stride 2 with padding and dilation 2, a 3x5 kernel, mixed pairs
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=(3, 5), padding=(1, 2), bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
]


@every_scheme
@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
def test_from_conv_at_full_rank_is_exact(case, device, dtype):
    for spec in CONVS:
        spec = dict(spec, kernel_size=case.kernel(spec["kernel_size"]))
        conv = nn.Conv2d(6, 10, **spec).to(device=device, dtype=dtype)
        layer = tk.LowRankConv2d.from_conv(conv, scheme=case.name)
        assert layer.rank == layer.full_rank == factorization.full_rank(conv.weight.shape,
                                                                        case.name)
        x = torch.randn(2, 6, 15, 14, device=device, dtype=dtype)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        expected = conv(x)
        torch.testing.assert_close(layer(x), expected, rtol=tol, atol=tol)
        torch.testing.assert_close(layer.full_weight(), conv.weight, rtol=tol, atol=tol)
        torch.testing.assert_close(layer.to_convs()(x), expected, rtol=tol, atol=tol)
        assert (layer.bias is None) == (conv.bias is None)


@every_scheme
def test_from_conv_keeps_dtype_device_bias_and_mode(case):
    conv = nn.Conv2d(4, 6, case.kernel(3)).to(torch.bfloat16).eval()
    layer = tk.LowRankConv2d.from_conv(conv, case.name, rank=2)
    assert all(p.dtype == torch.bfloat16 for p in layer.parameters()) and not layer.training
    torch.testing.assert_close(layer.bias, conv.bias)


@every_scheme
@pytest.mark.parametrize("kwargs", [{"energy": 0.7}, {"threshold": 0.2}, {"rank": 3},
                                    {"energy": 0.95, "rank": 4}])
def test_from_conv_follows_the_rank_rule(case, kwargs):
    """The layer's rank is the rule's on each of the scheme's matrix views (the largest over
    a batch of them: decoupled's filters share one rank)."""
    conv = nn.Conv2d(6, 9, case.kernel(3)).double()
    layer = tk.LowRankConv2d.from_conv(conv, scheme=case.name, **kwargs)
    rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
    assert layer.rank == case.reference_rank(conv.weight.detach(), **rule)


@every_scheme
def test_fresh_layer(case):
    torch.manual_seed(0)
    kernel = case.kernel((3, 5))
    layer = tk.LowRankConv2d(6, 12, kernel, rank=case.rank, stride=2, padding=(1, 2),
                             scheme=case.name)
    scheme = case.scheme
    assert layer.rank == case.rank
    assert [tuple(f.shape) for f in layer.factors] == list(
        factorization.factor_shapes(layer.weight_shape, case.rank, case.name))
    # spectral init: the best part of the rank of a dense nn.Conv2d-like draw, so each matrix
    # view has exactly the layer's rank and the weight keeps the draw's scale
    dense = layer.full_weight().detach()
    for view, r in zip(scheme.views, scheme.rank_parts(case.rank)):
        assert (torch.linalg.matrix_rank(view.to_matrix(dense)) == r).all()
    # a kaiming-uniform draw has E||W||^2 = numel * bound^2 / 3; truncation keeps part of it
    bound = 1 / dense[0].numel() ** 0.5
    ratio = float(torch.linalg.norm(dense)) / (dense.numel() * bound ** 2 / 3) ** 0.5
    assert 0.3 < ratio <= 1.1
    x = torch.randn(2, 6, 9, 9)
    y = layer(x)
    assert y.shape == nn.Conv2d(6, 12, kernel, stride=2, padding=(1, 2))(x).shape
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert f"rank={layer.rank}/{layer.full_rank}" in repr(layer)
    assert f"scheme='{case.name}'" in repr(layer)
    assert isinstance(tk.LowRankConv2d(4, 6, case.kernel(3), rank=1, scheme=case.name).rank,
                      (int, tuple))


@every_scheme
def test_meta_device_and_skip_init(case):
    layer = tk.LowRankConv2d(4, 8, case.kernel(3), rank=2, device="meta", scheme=case.name)
    assert all(f.is_meta for f in layer.factors)
    real = torch.nn.utils.skip_init(tk.LowRankConv2d, 4, 8, case.kernel(3), 2, scheme=case.name)
    assert [tuple(f.shape) for f in real.factors] == list(
        factorization.factor_shapes(real.weight_shape, real.rank, case.name))


@every_scheme
def test_gradcheck(case):
    layer = tk.LowRankConv2d(3, 4, case.kernel((3, 2)), rank=2, stride=2, padding=1,
                             dilation=(1, 2),
                             scheme=case.name, dtype=torch.float64)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    names = layer.geometry.factor_names + ("bias",)

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    params = tuple(getattr(layer, n).detach().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, (x, *params))


@every_scheme
def test_rank_zero_is_the_bias(case):
    layer = tk.LowRankConv2d(3, 5, case.kernel(3), rank=0, stride=2, padding=1,
                             scheme=case.name)
    assert not layer.full_weight().any()
    x = torch.randn(2, 3, 8, 7)
    y = layer(x)
    assert y.shape == nn.Conv2d(3, 5, case.kernel(3), stride=2, padding=1)(x).shape
    torch.testing.assert_close(y, layer.bias.view(1, 5, 1, 1).expand_as(y))


@every_scheme
def test_state_dict_with_other_ranks_resizes(case):
    small, large = case.resize_ranks
    k = case.kernel(3)
    source = nn.Sequential(tk.LowRankConv2d(4, 8, k, rank=small, padding=1, scheme=case.name),
                           nn.ReLU(),
                           tk.LowRankConv2d(8, 8, k, rank=large, padding=1, scheme=case.name))
    target = nn.Sequential(tk.LowRankConv2d(4, 8, k, rank=large, padding=1, scheme=case.name),
                           nn.ReLU(),
                           tk.LowRankConv2d(8, 8, k, rank=0, padding=1, scheme=case.name))
    target.load_state_dict(source.state_dict())
    assert [target[0].rank, target[2].rank] == [small, large]
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(target(x), source(x))
    # a shape that is not a rank change is still an error
    bad = source.state_dict()
    name = "0." + source[0].geometry.factor_names[0]
    bad[name] = torch.randn(bad[name].shape[0], 3, *bad[name].shape[2:])
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(bad)


@every_scheme
@pytest.mark.parametrize("stride, padding, dilation", [((2, 3), (1, 2), (2, 1)), (1, 0, 1)])
def test_to_convs_geometry(case, stride, padding, dilation):
    layer = tk.LowRankConv2d(3, 5, case.kernel((3, 5)), rank=2, stride=stride, padding=padding,
                             dilation=dilation, scheme=case.name)
    plain = layer.to_convs()
    assert len(plain) == len(layer.geometry.factor_names)
    for conv, thin in zip(plain, layer.thin_convs()):
        assert isinstance(conv, nn.Conv2d)
        assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == (
            thin.kernel, thin.stride, thin.padding, thin.dilation, thin.groups)
    assert all(conv.bias is None for conv in plain[:-1]) and plain[-1].bias is not None
    x = torch.randn(2, 3, 17, 19)
    torch.testing.assert_close(plain(x), layer(x))
    if len(plain) == 2:
        torch.testing.assert_close(layer.to_conv_pair()(x), layer(x))
    else:
        with pytest.raises(ValueError, match="to_convs"):
            layer.to_conv_pair()


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(2, 3), scheme="channel")
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(1, 2, 3), scheme="tucker2")
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(5, 2), scheme="tucker2")      # r_in above C
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(2, 7), scheme="tucker2")      # r_out above N
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=5, scheme="decoupled")         # above min(C, kh*kw)
    with pytest.raises(ValueError, match="scheme"):
        tk.LowRankConv2d(4, 6, 3, rank=2, scheme="cp")
    with pytest.raises(ValueError, match="groups"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3, groups=2), scheme="tucker2")
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3), scheme="tucker2", rank=(9, 2))
    with pytest.raises(ValueError, match="hooi_iterations"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3), scheme="channel", hooi_iterations=2)


def test_layer_arguments():
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 8, 3, rank=9)           # full rank is min(8, 36) = 8
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 8, 3, rank=-1)
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankConv2d(4, 8, 3, rank=2.0)
    with pytest.raises(ValueError, match="in_channels"):
        tk.LowRankConv2d(0, 8, 3, rank=2)
    with pytest.raises(ValueError, match="kernel_size"):
        tk.LowRankConv2d(4, 8, 0, rank=2)
    with pytest.raises(ValueError, match="scheme"):
        tk.LowRankConv2d(4, 8, 3, rank=2, scheme="tucker")
    with pytest.raises(ValueError, match="stride"):
        tk.LowRankConv2d(4, 8, 3, rank=2, stride=0)
    with pytest.raises(TypeError, match="conv"):
        tk.LowRankConv2d.from_conv(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="groups"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular"))
    with pytest.raises(ValueError, match="padding='same'"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 8, 2, padding="same"))
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 8, 3), rank=9)
    with pytest.raises(ValueError, match="energy"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 8, 3), energy=0)
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        tk.LowRankConv2d.from_conv(conv)
