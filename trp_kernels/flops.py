"""Counting the multiply-accumulates (MACs) and parameters of convolutions, dense or low-rank.

MACs of a conv = N * (C / groups) * kh * kw * H_out * W_out; of a LowRankConv2d pair
(docs/design.md section 2): channel r * (C*kh*kw + N) * H_out * W_out, spatial
r * C * kh * H_mid * W_mid + N * r * kw * H_out * W_out. The TRP papers' "speed-up" is the
ratio of the conv MACs of the dense and of the compressed model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._ops import conv_out_size
from .conv import split_geometry
from .layers import LowRankConv2d


@dataclass
class ConvCost:
    name: str
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    macs: int            # per sample
    params: int


def conv2d_macs(conv: nn.Conv2d, input_hw) -> tuple[int, tuple[int, int]]:
    (h, w), (kh, kw) = input_hw, conv.kernel_size
    if conv.padding == "same":         # stride 1 only; PyTorch pads asymmetrically if need be
        out = (h, w)
    else:
        padding = (0, 0) if conv.padding == "valid" else conv.padding
        out = (
            conv_out_size(h, kh, conv.stride[0], padding[0], conv.dilation[0]),
            conv_out_size(w, kw, conv.stride[1], padding[1], conv.dilation[1]),
        )
    macs = conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * out[0] * out[1]
    return macs, out


def lowrank_macs(layer: LowRankConv2d, input_hw) -> tuple[int, tuple[int, int]]:
    (s1, p1, d1), (s2, p2, d2) = split_geometry(layer.stride, layer.padding, layer.dilation,
                                                layer.scheme)
    k1, k2 = layer.weight1.shape[2:], layer.weight2.shape[2:]
    mid = tuple(conv_out_size(input_hw[i], k1[i], s1[i], p1[i], d1[i]) for i in range(2))
    out = tuple(conv_out_size(mid[i], k2[i], s2[i], p2[i], d2[i]) for i in range(2))
    r, C, N = layer.rank, layer.in_channels, layer.out_channels
    first = r * C * k1[0] * k1[1] * mid[0] * mid[1]
    second = N * r * k2[0] * k2[1] * out[0] * out[1]
    return first + second, out


def conv_costs(model: nn.Module, example_input: torch.Tensor) -> list[ConvCost]:
    """Per-conv MACs (per sample) and parameters, in forward order, from one forward pass of
    ``example_input`` (no gradients; BatchNorm statistics and the train/eval mode untouched)."""
    costs: list[ConvCost] = []
    handles = []

    def hook(name):
        def record(module, inputs, output):
            hw = tuple(inputs[0].shape[-2:])
            if isinstance(module, LowRankConv2d):
                macs, out = lowrank_macs(module, hw)
            else:
                macs, out = conv2d_macs(module, hw)
            params = sum(p.numel() for p in module.parameters(recurse=False))
            costs.append(ConvCost(name, hw, out, macs, params))
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, LowRankConv2d)):
            handles.append(module.register_forward_hook(hook(name)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return costs


def conv_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Total conv MACs per sample."""
    return sum(c.macs for c in conv_costs(model, example_input))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
