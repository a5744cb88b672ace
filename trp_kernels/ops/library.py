"""Loads the compiled extension ``trp_kernels._C`` (its schemas and kernels: csrc/ops.cpp) and
registers, per op, its fake kernel (shape propagation for torch.compile, torch.export and meta
tensors). The conv's autograd formula is registered in C++
(csrc/aten/trp/lowrank_conv2d_autograd.cpp), so that neither its forward nor its backward runs
Python code."""

from __future__ import annotations

import torch

from . import backends
from .conv_geometry import chain_out_hw, op_convs

try:
    from trp_kernels import _C  # importing registers the torch.ops.trp.* kernels
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "trp_kernels' compiled extension trp_kernels._C is missing or does not load "
        f"({exc}). Build it from the repository root with "
        "`pip install --no-build-isolation -e .` after installing torch; "
        "set TRP_NO_CUDA=1 to build the CPU kernels only."
    ) from exc

ops = torch.ops.trp
backends.apply_validation()  # fused joins the automatic conv choice only once validated
backends.apply_conv_choice_file()  # where the conv's measured choices are kept


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout the ops give their outputs: channels_last when the input is channels_last
    (and not also plain contiguous), else contiguous. Mirrors `memory_format_of` in C++."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def lowrank_conv2d_out_shape(x, weight1, weight2, stride, padding, dilation, scheme):
    convs = op_convs(weight1.shape, weight2.shape, stride, padding, dilation, scheme)
    return (x.shape[0], weight2.shape[0], *chain_out_hw(convs, x.shape[2:]))


@torch.library.register_fake("trp::truncated_svd")
def _truncated_svd_fake(W, energy=None, threshold=None, max_rank=None):
    *batch, m, n = W.shape
    k = torch.sym_min(m, n)
    return (
        W.new_empty((*batch, m, k)),
        W.new_empty((*batch, k)),
        W.new_empty((*batch, n, k)),
        W.new_empty(batch, dtype=torch.int64),
    )


@torch.library.register_fake("trp::lowrank_project")
def _lowrank_project_fake(W, energy=None, threshold=None, max_rank=None, basis=None):
    *batch, m, n = W.shape
    k = torch.sym_min(m, n)
    return (
        torch.empty_like(W, memory_format=torch.contiguous_format),
        torch.empty_like(W, memory_format=torch.contiguous_format),
        W.new_empty(batch, dtype=torch.int64),
        W.new_empty((*batch, k, k), dtype=torch.float64),
    )


@torch.library.register_fake("trp::lowrank_project_groups")
def _lowrank_project_groups_fake(W, energy=None, threshold=None, max_rank=None, basis=None):
    outs = [_lowrank_project_fake(group) for group in W]
    return tuple([o[i] for o in outs] for i in range(4))


@torch.library.register_fake("trp::lowrank_conv2d")
def _lowrank_conv2d_fake(x, weight1, weight2, bias, stride, padding, dilation, scheme):
    shape = lowrank_conv2d_out_shape(x, weight1, weight2, stride, padding, dilation, scheme)
    return x.new_empty(shape).contiguous(memory_format=memory_format_of(x))


@torch.library.register_fake("trp::lowrank_conv2d_backward")
def _lowrank_conv2d_backward_fake(grad_out, x, weight1, weight2, stride, padding, dilation,
                                  scheme, output_mask):
    def grad_like(t, needed):
        if not needed:
            return x.new_empty((0,))
        return torch.empty_like(t, memory_format=memory_format_of(t))

    need_x, need_w1, need_w2, need_bias = output_mask
    grad_bias = x.new_empty((weight2.shape[0],) if need_bias else (0,))
    return grad_like(x, need_x), grad_like(weight1, need_w1), grad_like(weight2, need_w2), grad_bias
