"""The inputs of the lowrank_conv2d tests, from one maker: every device and dtype sees the same
values, and the implementations each test runs."""

from __future__ import annotations

import pytest
import torch

from testing import EMULATED_CUDA
from trp_kernels.schemes import factorization

SCHEMES = ["channel", "spatial"]
CUDA_IMPLS = ["fused", "two_convs", "dense"]


def gradcheck(fn, inputs) -> bool:
    """torch.autograd.gradcheck under deterministic cuDNN, as PyTorch's own convolution
    double-backward tests run it: gradcheck compares repeated backward passes element by element,
    and cuDNN's default backward algorithms may sum in another order each time (atomics)."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        return torch.autograd.gradcheck(fn, inputs)


def impls_and_devices(cpu=("two_convs",), cuda=("fused", "two_convs", "dense", "auto")):
    """(impl, device) parameters: the CPU's implementations (two_convs is its default; fused and
    auto run two_convs there) and CUDA's, on the GPU (marked ``cuda``) and on the emulated CUDA
    device (marked ``emulated_cuda``)."""
    return ([pytest.param(impl, "cpu", id=f"{impl}-cpu") for impl in cpu]
            + [pytest.param(impl, "cuda", id=f"{impl}-cuda", marks=pytest.mark.cuda)
               for impl in cuda]
            + [pytest.param(impl, EMULATED_CUDA, id=f"{impl}-emulated-cuda",
                            marks=pytest.mark.emulated_cuda) for impl in cuda])


def conv_inputs(device, scheme, C=5, N=7, rank=3, kernel=(3, 3), size=(9, 8), batch=2,
                dtype=torch.float64, channels_last=False, requires_grad=False, seed=0,
                scale=1.0):
    """x [batch, C, *size], weight1 and weight2 (the factors of an N x C x kernel weight at
    ``rank``, times ``scale``) and bias [N]: drawn in float64 on the CPU from ``seed``, then
    cast and moved, so every device and dtype sees the same values."""
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    g = torch.Generator().manual_seed(seed)
    shape1, shape2 = factorization.factor_shapes((N, C, *kernel), rank, scheme)
    x = torch.randn(batch, C, *size, generator=g, dtype=torch.float64)
    w1 = torch.randn(shape1, generator=g, dtype=torch.float64) * scale
    w2 = torch.randn(shape2, generator=g, dtype=torch.float64) * scale
    bias = torch.randn(N, generator=g, dtype=torch.float64)
    tensors = [t.to(device=device, dtype=dtype) for t in (x, w1, w2, bias)]
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    return [t.requires_grad_(requires_grad) for t in tensors]


def relative_error(got, want):
    """||got - want|| / ||want|| in float64 on the CPU."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()
