"""Low-rank convolution: the two thin convs of a TRP-decomposed layer as one differentiable op.

``channel``: weight1 [r, C, kh, kw] (the layer's stride/padding/dilation), then weight2
[N, r, 1, 1]. ``spatial``: weight1 [r, C, kh, 1] (the vertical stride/padding/dilation), then
weight2 [N, r, 1, kw] (the horizontal ones). The bias belongs to the second conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, geometry
from ._ops import ops


def _conv_args(x, weight1, weight2, bias, stride, padding, dilation, scheme):
    _checks.tensor(x, "x")
    _checks.tensor(weight1, "weight1")
    _checks.tensor(weight2, "weight2")
    if bias is not None:
        _checks.tensor(bias, "bias")
    _checks.same_device(x, "x", weight1=weight1, weight2=weight2, bias=bias)
    return (
        _checks.pair(stride, "stride"),
        _checks.pair(padding, "padding"),
        _checks.pair(dilation, "dilation"),
        _checks.fused_scheme(scheme),
    )


def lowrank_conv2d(x, weight1, weight2, bias=None, stride=1, padding=0, dilation=1,
                   scheme="channel") -> torch.Tensor:
    """Low-rank 2-D convolution of ``x`` [B, C, H, W]; differentiable in x, both weights and
    the bias. The output equals a dense conv with ``factorization.full_weight(weight1, weight2, scheme)``."""
    geometry = _conv_args(x, weight1, weight2, bias, stride, padding, dilation, scheme)
    return ops.lowrank_conv2d(x, weight1, weight2, bias, *geometry)


def composite_conv2d(x, factors, convs, bias=None) -> torch.Tensor:
    """The thin convs ``convs`` (``geometry.ThinConv``) with weights ``factors`` in a row, as
    ATen convolutions (traceable by torch.compile, torch.export and ONNX); the bias goes to the
    last. A rank-0 factorisation computes zeros (plus the bias)."""
    if any(f.shape[0] == 0 or f.shape[1] == 0 for f in factors):
        hw = geometry.chain_out_hw(convs, x.shape[-2:])
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
    s = geometry.scheme(scheme)
    shapes = (weight1.shape, weight2.shape)
    convs = s.convs(s.weight_shape_of(*shapes), s.rank_of(*shapes), stride, padding, dilation)
    return composite_conv2d(x, (weight1, weight2), convs, bias)
