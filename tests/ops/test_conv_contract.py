"""trp::lowrank_conv2d's contract, per implementation x device (the CPU runs two_convs; CUDA
fused, two_convs, dense and auto): equal to the dense conv of the reconstructed weight for every
stride, padding and dilation, gradients (gradcheck in float64), channels_last, half precision,
rank 0. CUDA cases are marked ``cuda`` and show as skipped without a GPU (test_conv_cuda.py has
the CUDA-only checks). The float32 tolerances assume full float32 arithmetic: tests/conftest.py
turns TF32 off for every test."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import trp_kernels as tk
from conv_inputs import CUDA_IMPLS, SCHEMES, conv_inputs, gradcheck, impls_and_devices
from testing import dtypes
from trp_kernels.ops import backends
from trp_kernels.ops.conv import reference_lowrank_conv2d
from trp_kernels.schemes import factorization


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


@pytest.mark.parametrize("impl,device", impls_and_devices())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_equals_dense_conv(impl, device, dtype, scheme):
    cases = itertools.product(GEOMETRIES, KERNELS, (True, False))
    for seed, ((stride, padding, dilation), kernel, bias) in enumerate(cases):
        N, C = 7, 5
        rank = min(4, factorization.full_rank((N, C, *kernel), scheme))
        x, w1, w2, b = conv_inputs(device, scheme, C, N, rank, kernel, (13, 11), dtype=dtype,
                                   seed=seed)
        b = b if bias else None
        with backends.forced(conv=impl):
            y = tk.lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)
        dense = factorization.full_weight(w1.double(), w2.double(), scheme)
        ref = F.conv2d(x.double(), dense, None if b is None else b.double(), stride, padding, dilation)
        tol = 1e-4 if dtype == torch.float32 else 1e-12
        assert y.shape == ref.shape and y.dtype == dtype
        err = (y.double() - ref).abs().max() / ref.abs().max()
        assert err <= tol, (stride, padding, dilation, kernel, bias, float(err))
        two_convs = reference_lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)
        assert (y.double() - two_convs.double()).abs().max() / ref.abs().max() <= tol


@pytest.mark.parametrize("impl,device", impls_and_devices())
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("geometry", GEOMETRIES[1:4])
def test_gradcheck(impl, device, scheme, geometry):
    x, w1, w2, b = conv_inputs(device, scheme, C=3, N=4, rank=2, size=(7, 6), seed=1)
    stride, padding, dilation = geometry
    inputs = [t.requires_grad_() for t in (x, w1, w2, b)]

    def fn(x, w1, w2, b):
        return tk.lowrank_conv2d(x, w1, w2, b, stride, padding, dilation, scheme)

    with backends.forced(conv=impl):
        assert gradcheck(fn, inputs)
        # only some inputs requiring grad (the op's output_mask paths)
        for needs in ((True, False, False, False), (False, True, False, True), (False, False, True, False)):
            part = [t.detach().requires_grad_(n) for t, n in zip((x, w1, w2, b), needs)]
            assert gradcheck(fn, part)


@pytest.mark.parametrize("impl,device", impls_and_devices())
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradients_equal_dense_conv(impl, device, scheme):
    x, w1, w2, b = conv_inputs(device, scheme, C=4, N=6, rank=3, size=(10, 9), batch=3, seed=2)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b)]
    with backends.forced(conv=impl):
        tk.lowrank_conv2d(*leaves, 2, 1, 1, scheme).square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, w1, w2, b)]
    F.conv2d(ref[0], factorization.full_weight(ref[1], ref[2], scheme), ref[3], 2, 1).square().sum().backward()
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.parametrize("impl,device", impls_and_devices())
@pytest.mark.parametrize("scheme", SCHEMES)
def test_channels_last(impl, device, scheme):
    x, w1, w2, _ = conv_inputs(device, scheme, C=6, N=8, rank=4, size=(12, 12),
                               dtype=torch.float32, seed=3)
    xc = x.contiguous(memory_format=torch.channels_last)
    with backends.forced(conv=impl):
        y = tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, scheme)
        yc = tk.lowrank_conv2d(xc, w1, w2, None, 1, 1, 1, scheme)
        assert yc.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
        torch.testing.assert_close(y, yc, rtol=1e-5, atol=1e-5)
        xc.requires_grad_()
        tk.lowrank_conv2d(xc, w1, w2, None, 1, 1, 1, scheme).sum().backward()
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl,device", impls_and_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_half_precision_against_float32(impl, device, dtype, scheme):
    if device == "cpu" and dtype == torch.float16:
        probe = torch.randn(1, 2, 4, 4, dtype=dtype)
        try:
            F.conv2d(probe, torch.randn(2, 2, 3, 3, dtype=dtype))
        except RuntimeError:
            pytest.skip("this torch build has no float16 CPU convolution")
    x, w1, w2, _ = conv_inputs(device, scheme, C=8, N=16, rank=6, size=(10, 10),
                               dtype=torch.float32, seed=4)
    with backends.forced(conv=impl):
        ref = tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, scheme)
        y = tk.lowrank_conv2d(x.to(dtype), w1.to(dtype), w2.to(dtype), None, 1, 1, 1, scheme)
    assert y.dtype == dtype
    assert ((y.float() - ref).abs().max() / ref.abs().max()) <= 1e-2


@pytest.mark.parametrize("impl,device", impls_and_devices(cpu=("two_convs", "dense"),
                                                          cuda=CUDA_IMPLS + ["auto"]))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_rank_zero_is_the_bias(impl, device, scheme):
    # rank 0: the factors are empty, the output is the bias, the gradients zero (fused runs
    # two_convs, the one case its kernel does not take besides float64)
    inputs = conv_inputs(device, scheme, C=3, N=5, rank=0, size=(8, 7), dtype=torch.float32,
                         requires_grad=True)
    x, w1, w2, b = inputs
    with backends.forced(conv=impl):
        y = tk.lowrank_conv2d(*inputs, 2, 1, 1, scheme)
        grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
    assert y.shape == (2, 5, 4, 4)
    assert torch.equal(y, b.detach().view(1, 5, 1, 1).expand_as(y))
    assert torch.equal(grads[0], torch.zeros_like(x))
    assert grads[1].shape == w1.shape and grads[2].shape == w2.shape
    assert torch.equal(grads[2], torch.zeros_like(w2))
    assert torch.equal(grads[3], torch.full_like(b, y[:, 0].numel()))
    torch.testing.assert_close(grads[3], torch.full((5,), 32.0, device=device))
