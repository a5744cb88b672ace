"""The device-agnostic implementations of trp::lowrank_conv2d that TRP_CONV_IMPL selects:
`dense` (the full weight rebuilt from the factors, one convolution, gradients to the factors by
the product rule) on every device, and the implementation switch itself."""

from __future__ import annotations

import os

import pytest
import torch

import trp_kernels as tk
from trp_kernels import conv_select, factorization
from trp_kernels._ops import memory_format_of, ops
from trp_kernels.conv import reference_lowrank_conv2d

from testing import devices

# (kernel, stride, padding, dilation): the plain 3x3 layer, and odd ones.
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 2), (1, 2)),
    ((2, 3), (1, 2), (2, 1), (2, 1)),
]
SCHEMES = ["channel", "spatial"]


def make_inputs(device, scheme, kernel, rank=3, channels_last=False, dtype=torch.float64,
                requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, N = 5, 7
    x = torch.randn(2, C, 9, 8, generator=g, dtype=dtype)
    shape1, shape2 = factorization.factor_shapes((N, C, *kernel), rank, scheme)
    w1 = torch.randn(shape1, generator=g, dtype=dtype)
    w2 = torch.randn(shape2, generator=g, dtype=dtype)
    bias = torch.randn(N, generator=g, dtype=dtype)
    tensors = [t.to(device) for t in (x, w1, w2, bias)]
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.fixture
def dense():
    with conv_select.forced("dense"):
        yield


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}".format(*g))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_dense_forward_matches_reference(dense, device, scheme, geometry, channels_last):
    kernel, stride, padding, dilation = geometry
    x, w1, w2, bias = make_inputs(device, scheme, kernel, channels_last=channels_last)
    y = tk.lowrank_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme)
    ref = reference_lowrank_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme)
    assert relative_error(y, ref) < 1e-12
    assert y.is_contiguous(memory_format=memory_format_of(x))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}".format(*g))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_dense_gradients_match_reference(dense, device, scheme, geometry, channels_last):
    kernel, stride, padding, dilation = geometry
    inputs = make_inputs(device, scheme, kernel, channels_last=channels_last, requires_grad=True)
    y = tk.lowrank_conv2d(*inputs, stride, padding, dilation, scheme)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, grad_y)
    ref = reference_lowrank_conv2d(*inputs, stride, padding, dilation, scheme)
    ref_grads = torch.autograd.grad(ref, inputs, grad_y)
    for name, got, want, t in zip(("x", "weight1", "weight2", "bias"), grads, ref_grads, inputs):
        assert relative_error(got, want) < 1e-12, name
        assert got.is_contiguous(memory_format=memory_format_of(t)), name


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mask", [[True, False, False, False], [False, True, False, True],
                                  [False, False, True, False], [False, False, False, False]])
def test_dense_backward_output_mask(dense, device, scheme, mask):
    x, w1, w2, _ = make_inputs(device, scheme, (3, 3))
    args = ((1, 1), (1, 1), (1, 1), scheme)
    grad_y = torch.randn_like(tk.lowrank_conv2d(x, w1, w2, None, *args))
    grads = ops.lowrank_conv2d_backward(grad_y, x, w1, w2, *args, mask)
    with conv_select.forced("two_convs"):
        want = ops.lowrank_conv2d_backward(grad_y, x, w1, w2, *args, [True] * 4)
    for needed, got, ref in zip(mask, grads, want):
        if needed:
            assert relative_error(got, ref) < 1e-12
        else:
            assert got.numel() == 0


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dense_gradcheck(dense, device, scheme):
    inputs = make_inputs(device, scheme, (3, 2), rank=2, requires_grad=True)
    fn = lambda *a: tk.lowrank_conv2d(*a, (2, 1), (1, 1), (1, 2), scheme)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_dense_opcheck(dense, device, scheme, channels_last):
    x, w1, w2, bias = make_inputs(device, scheme, (3, 3), channels_last=channels_last,
                                  dtype=torch.float32, requires_grad=True)
    args = ([1, 2], [1, 0], [1, 1], scheme)
    torch.library.opcheck(ops.lowrank_conv2d, (x, w1, w2, bias, *args))
    grad_y = torch.randn_like(tk.lowrank_conv2d(x, w1, w2, bias, *args)).detach()
    for mask in ([True] * 4, [False, True, False, True], [False] * 4):  # partial: no aliasing
        torch.library.opcheck(ops.lowrank_conv2d_backward,
                              (grad_y, x.detach(), w1.detach(), w2.detach(), *args, mask))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dense_rank_zero(dense, device, scheme):
    inputs = make_inputs(device, scheme, (3, 3), rank=0, requires_grad=True)
    x, w1, w2, bias = inputs
    y = tk.lowrank_conv2d(*inputs, 1, 1, 1, scheme)
    assert torch.equal(y, bias.detach().view(1, -1, 1, 1).expand_as(y))
    grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
    assert torch.equal(grads[0], torch.zeros_like(x))
    assert grads[1].shape == w1.shape and grads[2].shape == w2.shape
    assert torch.equal(grads[2], torch.zeros_like(w2))
    assert torch.equal(grads[3], torch.full_like(bias, y[:, 0].numel()))


@pytest.mark.parametrize("device", devices)
def test_unknown_impl_is_a_value_error(device, monkeypatch):
    x, w1, w2, bias = make_inputs(device, "channel", (3, 3))
    monkeypatch.setenv(conv_select.ENV, "fastest")
    with pytest.raises(ValueError, match="TRP_CONV_IMPL"):
        tk.lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "channel")


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("impl", ["auto", "fused", "two_convs", "dense"])
def test_every_impl_name_runs(device, impl):
    # On the CPU, `fused` and `auto` run two_convs; on CUDA see test_conv_cuda.py.
    x, w1, w2, bias = make_inputs(device, "spatial", (3, 3))
    with conv_select.forced(impl):
        y = tk.lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial")
    ref = reference_lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial")
    assert relative_error(y, ref) < 1e-12


def test_forced_restores_the_environment(monkeypatch):
    monkeypatch.delenv(conv_select.ENV, raising=False)
    with conv_select.forced("dense"):
        assert conv_select.forced_impl() == "dense"
        with conv_select.forced(None):
            assert conv_select.forced_impl() is None
        assert os.environ[conv_select.ENV] == "dense"
    assert conv_select.ENV not in os.environ
    with pytest.raises(ValueError, match="impl"):
        with conv_select.forced("fastest"):
            pass
