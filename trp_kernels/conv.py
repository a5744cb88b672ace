"""Low-rank convolution: the two thin convs of a TRP-decomposed layer as one differentiable op.

``channel``: weight1 [r, C, kh, kw] (the layer's stride/padding/dilation), then weight2
[N, r, 1, 1]. ``spatial``: weight1 [r, C, kh, 1] (the vertical stride/padding/dilation), then
weight2 [N, r, 1, kw] (the horizontal ones). The bias belongs to the second conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks
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
        _checks.scheme(scheme),
    )


def lowrank_conv2d(x, weight1, weight2, bias=None, stride=1, padding=0, dilation=1,
                   scheme="channel") -> torch.Tensor:
    """Low-rank 2-D convolution of ``x`` [B, C, H, W]; differentiable in x, both weights and
    the bias. The output equals a dense conv with ``factorization.full_weight(weight1, weight2, scheme)``."""
    geometry = _conv_args(x, weight1, weight2, bias, stride, padding, dilation, scheme)
    return ops.lowrank_conv2d(x, weight1, weight2, bias, *geometry)


def split_geometry(stride, padding, dilation, scheme):
    """(stride, padding, dilation) of the first and of the second conv of a scheme."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if scheme == "channel":
        return ((sh, sw), (ph, pw), (dh, dw)), ((1, 1), (0, 0), (1, 1))
    return ((sh, 1), (ph, 0), (dh, 1)), ((1, sw), (0, pw), (1, dw))


def reference_lowrank_conv2d(x, weight1, weight2, bias=None, stride=1, padding=0, dilation=1,
                             scheme="channel") -> torch.Tensor:
    """Pure-torch reference: two F.conv2d calls."""
    stride, padding, dilation, scheme = _conv_args(x, weight1, weight2, bias, stride, padding,
                                                   dilation, scheme)
    (s1, p1, d1), (s2, p2, d2) = split_geometry(stride, padding, dilation, scheme)
    mid = F.conv2d(x, weight1, None, s1, p1, d1)
    return F.conv2d(mid, weight2, bias, s2, p2, d2)
