"""trp::lowrank_conv2d: equal to the dense conv of the reconstructed weight for every stride,
padding and dilation; gradients checked numerically in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import trp_kernels as tk
from trp_kernels import factorization
from trp_kernels.conv import reference_lowrank_conv2d

from testing import devices, dtypes

GEOMETRIES = [
    # stride, padding, dilation
    ((1, 1), (0, 0), (1, 1)),
    ((1, 1), (1, 1), (1, 1)),
    ((2, 2), (1, 1), (1, 1)),
    ((2, 1), (2, 0), (1, 1)),
    ((1, 3), (0, 2), (2, 1)),
    ((3, 2), (3, 1), (2, 3)),
]
KERNELS = [(3, 3), (5, 3), (1, 3)]


def factors(scheme, N, C, kernel, rank, dtype, device, g):
    w1_shape, w2_shape = factorization.factor_shapes((N, C, *kernel), rank, scheme)
    return (torch.randn(w1_shape, generator=g, dtype=dtype).to(device),
            torch.randn(w2_shape, generator=g, dtype=dtype).to(device))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_forward_equals_dense_conv(device, dtype, scheme):
    g = torch.Generator().manual_seed(0)
    for (stride, padding, dilation), kernel, bias in itertools.product(GEOMETRIES, KERNELS, (True, False)):
        N, C = 7, 5
        rank = min(4, factorization.full_rank((N, C, *kernel), scheme))
        w1, w2 = factors(scheme, N, C, kernel, rank, dtype, device, g)
        b = torch.randn(N, generator=g, dtype=dtype).to(device) if bias else None
        x = torch.randn(2, C, 13, 11, generator=g, dtype=dtype).to(device)
        y = tk.lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)
        dense = factorization.full_weight(w1.double(), w2.double(), scheme)
        ref = F.conv2d(x.double(), dense, None if b is None else b.double(), stride, padding, dilation)
        tol = 1e-4 if dtype == torch.float32 else 1e-12
        assert y.shape == ref.shape and y.dtype == dtype
        err = (y.double() - ref).abs().max() / ref.abs().max()
        assert err <= tol, (stride, padding, dilation, kernel, bias, float(err))
        two_convs = reference_lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)
        assert (y.double() - two_convs.double()).abs().max() / ref.abs().max() <= tol


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("geometry", GEOMETRIES[1:4])
def test_gradcheck(device, scheme, geometry):
    g = torch.Generator().manual_seed(1)
    w1, w2 = factors(scheme, 4, 3, (3, 3), 2, torch.float64, device, g)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(4, generator=g, dtype=torch.float64).to(device)
    stride, padding, dilation = geometry
    inputs = [t.requires_grad_() for t in (x, w1, w2, b)]

    def fn(x, w1, w2, b):
        return tk.lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)

    assert torch.autograd.gradcheck(fn, inputs)
    # only some inputs requiring grad (the op's output_mask paths)
    for needs in ((True, False, False, False), (False, True, False, True), (False, False, True, False)):
        part = [t.detach().requires_grad_(n) for t, n in zip((x, w1, w2, b), needs)]
        assert torch.autograd.gradcheck(fn, part)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_gradients_equal_dense_conv(device, scheme):
    g = torch.Generator().manual_seed(2)
    w1, w2 = factors(scheme, 6, 4, (3, 3), 3, torch.float64, device, g)
    x = torch.randn(3, 4, 10, 9, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(6, generator=g, dtype=torch.float64).to(device)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b)]
    tk.lowrank_conv2d(*leaves, 2, 1, 1, scheme).square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, w1, w2, b)]
    F.conv2d(ref[0], factorization.full_weight(ref[1], ref[2], scheme), ref[3], 2, 1).square().sum().backward()
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_channels_last(device, scheme):
    g = torch.Generator().manual_seed(3)
    w1, w2 = factors(scheme, 8, 6, (3, 3), 4, torch.float32, device, g)
    x = torch.randn(2, 6, 12, 12, generator=g).to(device)
    xc = x.contiguous(memory_format=torch.channels_last)
    y = tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, scheme)
    yc = tk.lowrank_conv2d(xc, w1, w2, None, 1, 1, 1, scheme)
    assert yc.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
    torch.testing.assert_close(y, yc, rtol=1e-5, atol=1e-5)
    xc.requires_grad_()
    tk.lowrank_conv2d(xc, w1, w2, None, 1, 1, 1, scheme).sum().backward()
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_half_precision_against_float32(device, dtype, scheme):
    if device == "cpu" and dtype == torch.float16:
        probe = torch.randn(1, 2, 4, 4, dtype=dtype)
        try:
            F.conv2d(probe, torch.randn(2, 2, 3, 3, dtype=dtype))
        except RuntimeError:
            pytest.skip("this torch build has no float16 CPU convolution")
    g = torch.Generator().manual_seed(4)
    w1, w2 = factors(scheme, 16, 8, (3, 3), 6, torch.float32, device, g)
    x = torch.randn(2, 8, 10, 10, generator=g).to(device)
    ref = tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, scheme)
    y = tk.lowrank_conv2d(x.to(dtype), w1.to(dtype), w2.to(dtype), None, 1, 1, 1, scheme)
    assert y.dtype == dtype
    assert ((y.float() - ref).abs().max() / ref.abs().max()) <= 1e-2


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_rank_zero_is_the_bias(device, scheme):
    w1_shape, w2_shape = factorization.factor_shapes((5, 3, 3, 3), 0, scheme)
    w1 = torch.zeros(w1_shape, device=device, requires_grad=True)
    w2 = torch.zeros(w2_shape, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    x = torch.randn(2, 3, 8, 7, device=device, requires_grad=True)
    y = tk.lowrank_conv2d(x, w1, w2, b, 2, 1, 1, scheme)
    assert y.shape == (2, 5, 4, 4)
    torch.testing.assert_close(y, b.view(1, 5, 1, 1).expand_as(y))
    y.sum().backward()
    assert not x.grad.any() and w1.grad.shape == w1_shape
    torch.testing.assert_close(b.grad, torch.full((5,), 32.0, device=device))
