"""Low-rank convolution: the two thin convs of a ``channel`` or ``spatial`` factorised layer as
one differentiable op (``torch.ops.trp.lowrank_conv2d``; which implementation runs is
backends.py's), the same thin convs as ATen convolutions for any scheme, and the reference.
The factor shapes are docs/design.md, "The schemes"; conv_geometry.py holds their thin convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks
from .conv_geometry import chain_out_hw, op_convs
from .library import _C, ops


def _conv_args(x, weight1, weight2, bias, stride, padding, dilation, scheme):
    checks.tensor(x, "x")
    checks.tensor(weight1, "weight1")
    checks.tensor(weight2, "weight2")
    if bias is not None:
        checks.tensor(bias, "bias")
    checks.same_device(x, "x", weight1=weight1, weight2=weight2, bias=bias)
    return (
        checks.pair(stride, "stride"),
        checks.pair(padding, "padding"),
        checks.pair(dilation, "dilation"),
        checks.fused_scheme(scheme),
    )


def lowrank_conv2d(x, weight1, weight2, bias=None, stride=1, padding=0, dilation=1,
                   scheme="channel") -> torch.Tensor:
    """Low-rank 2-D convolution of ``x`` [B, C, H, W]; differentiable in x, both weights and
    the bias. The output equals a dense conv with the weight the factors represent."""
    # Eager calls with plain arguments go straight to the op through the C++ dispatcher
    # (csrc/python/module.cpp: the same op call, without torch.ops' argument matching); the
    # rest, and what torch.compile traces, take the checked torch.ops path.
    if not torch.compiler.is_compiling():
        y = _C.lowrank_conv2d(x, weight1, weight2, bias, stride, padding, dilation, scheme)
        if y is not NotImplemented:
            return y
    geometry = _conv_args(x, weight1, weight2, bias, stride, padding, dilation, scheme)
    return ops.lowrank_conv2d(x, weight1, weight2, bias, *geometry)


def composite_conv2d(x, factors, convs, bias=None) -> torch.Tensor:
    """The thin convs ``convs`` (``ThinConv``) with weights ``factors`` in a row, as
    ATen convolutions (traceable by torch.compile, torch.export and ONNX); the bias goes to the
    last. A rank-0 factorisation computes zeros (plus the bias)."""
    if any(f.shape[0] == 0 or f.shape[1] == 0 for f in factors):
        hw = chain_out_hw(convs, x.shape[-2:])
        out = x.new_zeros((x.shape[0], convs[-1].out_channels, *hw))
        return out if bias is None else out + bias.view(-1, 1, 1)
    last = len(convs) - 1
    for i, (weight, conv) in enumerate(zip(factors, convs)):
        x = F.conv2d(x, weight, bias if i == last else None, conv.stride, conv.padding,
                     conv.dilation, conv.groups)
    return x


def reference_lowrank_conv2d(x, weight1, weight2, bias=None, stride=1, padding=0, dilation=1,
                             scheme="channel") -> torch.Tensor:
    """Pure-torch reference: two F.conv2d calls."""
    stride, padding, dilation, scheme = _conv_args(x, weight1, weight2, bias, stride, padding,
                                                   dilation, scheme)
    convs = op_convs(weight1.shape, weight2.shape, stride, padding, dilation, scheme)
    return composite_conv2d(x, (weight1, weight2), convs, bias)
