"""The device-agnostic ``dense`` implementation of trp::lowrank_conv2d that TRP_CONV_IMPL=dense
selects: forward and gradients against the reference in float64, output masks, gradcheck and
opcheck, on every device."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from conv_inputs import SCHEMES, conv_inputs, gradcheck, relative_error
from testing import cpu_and_cuda
from trp_kernels.ops import backends, memory_format_of, ops
from trp_kernels.ops.conv import reference_lowrank_conv2d


# (kernel, stride, padding, dilation): the plain 3x3 layer, and odd ones.
DENSE_GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 2), (1, 2)),
    ((2, 3), (1, 2), (2, 1), (2, 1)),
]


def every_dense_case(test):
    """Parametrizes ``test`` over device x scheme x geometry x layout."""
    marks = [pytest.mark.parametrize("device", cpu_and_cuda()),
             pytest.mark.parametrize("scheme", SCHEMES),
             pytest.mark.parametrize("geometry", DENSE_GEOMETRIES,
                                     ids=lambda g: "k{}s{}p{}d{}".format(*g)),
             pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])]
    for mark in reversed(marks):
        test = mark(test)
    return test


@pytest.fixture
def dense():
    with backends.forced(conv="dense"):
        yield


@every_dense_case
def test_dense_forward_matches_reference(dense, device, scheme, geometry, channels_last):
    kernel, stride, padding, dilation = geometry
    x, w1, w2, bias = conv_inputs(device, scheme, kernel=kernel, channels_last=channels_last)
    y = tk.lowrank_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme)
    ref = reference_lowrank_conv2d(x, w1, w2, bias, stride, padding, dilation, scheme)
    assert relative_error(y, ref) < 1e-12
    assert y.is_contiguous(memory_format=memory_format_of(x))


@every_dense_case
def test_dense_gradients_match_reference(dense, device, scheme, geometry, channels_last):
    kernel, stride, padding, dilation = geometry
    inputs = conv_inputs(device, scheme, kernel=kernel, channels_last=channels_last,
                         requires_grad=True)
    y = tk.lowrank_conv2d(*inputs, stride, padding, dilation, scheme)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, grad_y)
    ref = reference_lowrank_conv2d(*inputs, stride, padding, dilation, scheme)
    ref_grads = torch.autograd.grad(ref, inputs, grad_y)
    for name, got, want, t in zip(("x", "weight1", "weight2", "bias"), grads, ref_grads, inputs):
        assert relative_error(got, want) < 1e-12, name
        assert got.is_contiguous(memory_format=memory_format_of(t)), name


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mask", [[True, False, False, False], [False, True, False, True],
                                  [False, False, True, False], [False, False, False, False]])
def test_dense_backward_output_mask(dense, device, scheme, mask):
    x, w1, w2, _ = conv_inputs(device, scheme)
    args = ((1, 1), (1, 1), (1, 1), scheme)
    grad_y = torch.randn_like(tk.lowrank_conv2d(x, w1, w2, None, *args))
    grads = ops.lowrank_conv2d_backward(grad_y, x, w1, w2, *args, mask)
    with backends.forced(conv="two_convs"):
        want = ops.lowrank_conv2d_backward(grad_y, x, w1, w2, *args, [True] * 4)
    for needed, got, ref in zip(mask, grads, want):
        if needed:
            assert relative_error(got, ref) < 1e-12
        else:
            assert got.numel() == 0


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dense_gradcheck(dense, device, scheme):
    inputs = conv_inputs(device, scheme, rank=2, kernel=(3, 2), requires_grad=True)
    fn = lambda *a: tk.lowrank_conv2d(*a, (2, 1), (1, 1), (1, 2), scheme)  # noqa: E731
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("device", cpu_and_cuda(emulated=False))  # opcheck: CPU, CUDA, XPU only
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_dense_opcheck(dense, device, scheme, channels_last):
    x, w1, w2, bias = conv_inputs(device, scheme, channels_last=channels_last,
                                  dtype=torch.float32, requires_grad=True)
    args = ([1, 2], [1, 0], [1, 1], scheme)
    torch.library.opcheck(ops.lowrank_conv2d, (x, w1, w2, bias, *args))
    grad_y = torch.randn_like(tk.lowrank_conv2d(x, w1, w2, bias, *args)).detach()
    for mask in ([True] * 4, [False, True, False, True], [False] * 4):  # partial: no aliasing
        torch.library.opcheck(ops.lowrank_conv2d_backward,
                              (grad_y, x.detach(), w1.detach(), w2.detach(), *args, mask))
