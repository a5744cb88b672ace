"""LowRankConv2d: construction, exact decomposition of nn.Conv2d, conversion to plain convs,
checkpoints of another rank."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import trp_kernels as tk
from trp_kernels.schemes import factorization
from trp_kernels.ops.svd import reference_rank

from testing import devices, dtypes

CONVS = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=(5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid"),
]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_from_conv_at_full_rank_is_exact(device, dtype, scheme):
    for spec in CONVS:
        conv = nn.Conv2d(6, 10, **spec).to(device=device, dtype=dtype)
        layer = tk.LowRankConv2d.from_conv(conv, scheme=scheme)
        assert layer.rank == layer.full_rank == factorization.full_rank(conv.weight.shape, scheme)
        x = torch.randn(2, 6, 15, 14, device=device, dtype=dtype)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(layer(x), conv(x), rtol=tol, atol=tol)
        torch.testing.assert_close(layer.full_weight(), conv.weight, rtol=tol, atol=tol)
        torch.testing.assert_close(layer.to_conv_pair()(x), conv(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factor_mapping_of_the_design(scheme):
    """docs/design.md section 2 spelled out: weight1/weight2 are sqrt(S)-split SVD factors of the
    scheme's matrix."""
    W = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    layer = tk.LowRankConv2d.from_conv(_conv_with(W), scheme=scheme, rank=4)
    M = W.reshape(8, 45) if scheme == "channel" else W.permute(1, 2, 0, 3).reshape(15, 24)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    U, S, V = U[:, :4], S[:4], Vh[:4].T
    if scheme == "channel":
        w1 = (S.sqrt()[:, None] * V.T).reshape(4, 5, 3, 3)
        w2 = (U * S.sqrt()).reshape(8, 4, 1, 1)
    else:
        w1 = (U * S.sqrt()).reshape(5, 3, 4).permute(2, 0, 1)[..., None]
        w2 = (S.sqrt()[:, None] * V.T).reshape(4, 8, 3).permute(1, 0, 2)[:, :, None, :]
    # singular vectors are defined up to sign: compare the products of matched pairs
    signs = torch.sign((layer.weight1.reshape(4, -1) * w1.reshape(4, -1)).sum(1))
    torch.testing.assert_close(layer.weight1, w1 * signs.view(4, 1, 1, 1))
    torch.testing.assert_close(layer.weight2, w2 * signs.view(1, 4, 1, 1))


def _conv_with(W, bias=None):
    conv = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2:], bias=bias is not None).to(W.dtype)
    with torch.no_grad():
        conv.weight.copy_(W)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_from_conv_rank_rules(scheme):
    conv = nn.Conv2d(8, 16, 3, padding=1)
    M = factorization.weight_to_matrix(conv.weight.detach().double(), scheme)
    S = torch.linalg.svdvals(M)
    for kwargs in ({"energy": 0.7}, {"threshold": float(S[5] + S[6]) / 2}, {"rank": 3}, {"energy": 0.9, "rank": 5}):
        layer = tk.LowRankConv2d.from_conv(conv, scheme=scheme, **kwargs)
        rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
        assert layer.rank == int(reference_rank(S, **rule))
        # the reconstruction is the best rank-r approximation
        err = torch.linalg.norm(factorization.weight_to_matrix((layer.full_weight() - conv.weight).detach().double(), scheme))
        assert abs(float(err) - float(torch.linalg.norm(S[layer.rank:]))) < 1e-4


def test_from_conv_keeps_dtype_device_bias_and_mode():
    conv = nn.Conv2d(4, 6, 3).to(torch.bfloat16).eval()
    layer = tk.LowRankConv2d.from_conv(conv, rank=3)
    assert layer.weight1.dtype == torch.bfloat16 and not layer.training
    torch.testing.assert_close(layer.bias, conv.bias)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_fresh_layer(scheme):
    torch.manual_seed(0)
    layer = tk.LowRankConv2d(6, 12, 3, rank=4, stride=2, padding=1, scheme=scheme)
    assert layer.rank == 4 and layer.full_rank == (12 if scheme == "channel" else 18)
    w1_shape, w2_shape = factorization.factor_shapes((12, 6, 3, 3), 4, scheme)
    assert tuple(layer.weight1.shape) == w1_shape and tuple(layer.weight2.shape) == w2_shape
    # spectral init: the best rank-4 part of a dense nn.Conv2d-like draw, so the same scale
    dense = layer.full_weight().detach()
    assert int(torch.linalg.matrix_rank(factorization.weight_to_matrix(dense, scheme))) == 4
    # a kaiming-uniform draw has E||W||^2 = numel * bound^2 / 3; truncation keeps part of it
    bound = 1 / (6 * 9) ** 0.5
    ratio = float(torch.linalg.norm(dense)) / (dense.numel() * bound ** 2 / 3) ** 0.5
    assert 0.3 < ratio <= 1.1
    y = layer(torch.randn(2, 6, 9, 9))
    assert y.shape == (2, 12, 5, 5)
    y.sum().backward()
    assert layer.weight1.grad is not None and layer.weight2.grad is not None
    assert "rank=4/" in repr(layer) and f"scheme='{scheme}'" in repr(layer)


def test_meta_device_and_skip_init():
    layer = tk.LowRankConv2d(4, 8, 3, rank=2, device="meta")
    assert layer.weight1.is_meta
    real = torch.nn.utils.skip_init(tk.LowRankConv2d, 4, 8, 3, 2)
    assert real.weight1.shape == (2, 4, 3, 3)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_state_dict_with_other_rank_resizes(scheme):
    source = nn.Sequential(tk.LowRankConv2d(4, 8, 3, rank=2, padding=1, scheme=scheme), nn.ReLU(),
                           tk.LowRankConv2d(8, 8, 3, rank=5, padding=1, scheme=scheme))
    target = nn.Sequential(tk.LowRankConv2d(4, 8, 3, rank=8, padding=1, scheme=scheme), nn.ReLU(),
                           tk.LowRankConv2d(8, 8, 3, rank=1, padding=1, scheme=scheme))
    target.load_state_dict(source.state_dict())
    assert [target[0].rank, target[2].rank] == [2, 5]
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(target(x), source(x))
    # a shape that is not a rank change is still an error
    bad = source.state_dict()
    bad["0.weight1"] = torch.randn(2, 3, 3, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(bad)


def test_to_conv_pair_geometry():
    for scheme, (stride, padding, dilation) in itertools.product(
            ["channel", "spatial"], [((2, 3), (1, 2), (2, 1)), (1, 0, 1)]):
        layer = tk.LowRankConv2d(3, 5, (3, 5), rank=2, stride=stride, padding=padding,
                                 dilation=dilation, scheme=scheme)
        first, second = layer.to_conv_pair()
        assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
        assert first.bias is None and second.bias is not None
        x = torch.randn(2, 3, 17, 19)
        torch.testing.assert_close(layer.to_conv_pair()(x), layer(x))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["tucker2", "decoupled"])
def test_new_formats_from_conv_in_every_dtype(device, scheme):
    for spec in CONVS:
        conv = nn.Conv2d(6, 10, **spec).to(device)
        layer = tk.LowRankConv2d.from_conv(conv, scheme=scheme)
        assert layer.rank == layer.full_rank == factorization.full_rank(conv.weight.shape, scheme)
        x = torch.randn(2, 6, 15, 14, device=device)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.to_convs()(x), conv(x), rtol=1e-5, atol=1e-5)
    half = tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3).to(torch.bfloat16).eval(), scheme, rank=2)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters()) and not half.training
