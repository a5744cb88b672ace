"""Counting the multiply-accumulates (MACs) and parameters of convolutions, dense or low-rank.

MACs of a conv = N * (C / groups) * kh * kw * H_out * W_out; a LowRankConv2d costs the sum of
its thin convs (``trp_kernels.geometry``), each at its own resolution (docs/design.md
section 2): channel r * (C*kh*kw + N) * H_out * W_out, spatial
r * C * kh * H_mid * W_mid + N * r * kw * H_out * W_out, tucker2
r_in * C * H_in * W_in + (r_out * r_in * kh * kw + N * r_out) * H_out * W_out, decoupled
r * N * C * H_in * W_in + r * N * kh * kw * H_out * W_out. The TRP papers' "speed-up" is the
ratio of the conv MACs of the dense and of the compressed model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .geometry import ThinConv
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
    plain = ThinConv(conv.in_channels, conv.out_channels, (kh, kw), conv.stride,
                     (0, 0) if conv.padding in ("same", "valid") else conv.padding,
                     conv.dilation, conv.groups)
    if conv.padding == "same":         # stride 1 only; PyTorch pads asymmetrically if need be
        return plain.weight_numel * h * w, (h, w)
    return plain.macs(input_hw)


def lowrank_macs(layer: LowRankConv2d, input_hw) -> tuple[int, tuple[int, int]]:
    return layer.format.macs(layer.weight_shape, layer.rank, input_hw, layer.stride,
                             layer.padding, layer.dilation)


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
    run_hooked(model, example_input, handles)
    return costs


def run_hooked(model: nn.Module, example_input: torch.Tensor, handles) -> None:
    """Runs ``model(example_input)`` once in eval mode without gradients for the hooks in
    ``handles`` to see, then removes them and restores every module's training flag."""
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


def conv_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Total conv MACs per sample."""
    return sum(c.macs for c in conv_costs(model, example_input))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
