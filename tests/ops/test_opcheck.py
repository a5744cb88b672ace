"""torch.library.opcheck of every trp op: schema, fake (meta) kernel, autograd registration
and AOT dispatch agree with the real kernels; and the SVD ops under torch.compile. Not on the
emulated CUDA device: opcheck knows the CPU, CUDA and XPU only."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from testing import cpu_and_cuda, devices, dtypes
from trp_kernels.schemes import factorization

ops = torch.ops.trp


@pytest.mark.parametrize("device", cpu_and_cuda(emulated=False))
@pytest.mark.parametrize("dtype", dtypes)
def test_svd_ops(device, dtype):
    for shape in ((12, 30), (2, 3, 20, 8)):
        W = torch.randn(shape, dtype=dtype, device=device)
        for rule in ((None, None, None), (0.9, None, None), (None, 0.5, 4)):
            torch.library.opcheck(ops.truncated_svd.default, (W, *rule))
            torch.library.opcheck(ops.lowrank_project.default, (W, *rule))
    groups = [torch.randn(3, 12, 30, dtype=dtype, device=device),
              torch.randn(2, 8, 8, dtype=dtype, device=device)]
    torch.library.opcheck(ops.lowrank_project_groups.default, (groups, 0.9, None, None))


def conv_args(scheme, device, dtype, bias=True, requires_grad=False, channels_last=False):
    N, C, r, kh, kw = 6, 4, 3, 3, 3
    w1_shape, w2_shape = factorization.factor_shapes((N, C, kh, kw), r, scheme)
    x = torch.randn(2, C, 9, 8, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [x, torch.randn(w1_shape, dtype=dtype, device=device),
               torch.randn(w2_shape, dtype=dtype, device=device),
               torch.randn(N, dtype=dtype, device=device) if bias else None]
    for t in tensors:
        if t is not None:
            t.requires_grad_(requires_grad)
    return (*tensors, [2, 1], [1, 2], [1, 2], scheme)


@pytest.mark.parametrize("device", cpu_and_cuda(emulated=False))
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lowrank_conv2d(device, dtype, scheme, bias, channels_last):
    for requires_grad in (False, True):
        args = conv_args(scheme, device, dtype, bias, requires_grad, channels_last)
        torch.library.opcheck(ops.lowrank_conv2d.default, args)


@pytest.mark.parametrize("device", cpu_and_cuda(emulated=False))
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_lowrank_conv2d_backward(device, scheme):
    x, w1, w2, _, stride, padding, dilation, scheme = conv_args(scheme, device, torch.float64)
    grad = torch.randn_like(ops.lowrank_conv2d(x, w1, w2, None, stride, padding, dilation, scheme))
    for mask in ([True, True, True, True], [False, True, False, True], [True, False, False, False]):
        torch.library.opcheck(
            ops.lowrank_conv2d_backward.default,
            (grad, x, w1, w2, stride, padding, dilation, scheme, mask),
        )


@pytest.mark.parametrize("device", devices)
def test_svd_ops_under_compile(device):
    def project(W):
        low, sub, rank = tk.lowrank_project(W, energy=0.9, check_finite=False)
        return low + 1e-3 * sub, rank

    W = torch.randn(3, 16, 40, device=device)
    compiled = torch.compile(project, fullgraph=True, backend="aot_eager")
    low, rank = compiled(W)
    ref_low, ref_rank = project(W)
    torch.testing.assert_close(low, ref_low)
    assert torch.equal(rank, ref_rank)
