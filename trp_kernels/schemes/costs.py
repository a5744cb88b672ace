"""What convolutions cost: multiply-accumulates (MACs) per sample and parameters, dense or
factorised, counted by the thin convs of each scheme at their own resolutions (geometry.py;
the counts are docs/design.md, "Costs and where they live"). The TRP papers' "speed-up" is the
ratio of the conv MACs of the dense and of the compressed model; a factorised form that is not
cheaper than its dense conv is never worth taking (``is_cheaper``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops.conv_geometry import ThinConv
from .factorised_layer import FactorisedLayer
from .layers import LowRankConv2d, explicit_padding
from .lowrank_linear import LowRankLinear

# Without an example input, costs are compared at this input size: for the usual 'same'-padded
# layers the intermediate of a stride-s spatial pair is then exactly s times wider than the output,
# as at any even input size.
NOMINAL_HW = (1024, 1024)


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


def lowrank_macs(layer: FactorisedLayer, input_hw) -> tuple[int, tuple[int, int]]:
    if isinstance(layer, LowRankLinear):
        return layer.geometry.macs(layer.weight_shape, layer.rank, input_hw)
    return layer.geometry.macs(layer.weight_shape, layer.rank, input_hw, layer.stride,
                               layer.padding, layer.dilation)


def _as_conv(layer: nn.Module) -> nn.Conv2d:
    """``layer`` itself for a conv; for a linear layer the 1x1 conv it is to the costs (on the
    meta device: shapes only)."""
    if isinstance(layer, nn.Linear):
        return nn.Conv2d(layer.in_features, layer.out_features, 1, device="meta")
    return layer


def dense_macs(conv: nn.Module, input_hw=None) -> int:
    """MACs per sample of ``conv`` (or a linear layer) on ``input_hw`` (default
    ``NOMINAL_HW``; a linear layer's is (rows, 1): the rows of its input per sample)."""
    return conv2d_macs(_as_conv(conv), input_hw or NOMINAL_HW)[0]


def factorised_macs(conv: nn.Module, scheme: str, rank, input_hw=None) -> int:
    """MACs per sample of ``conv`` (or a linear layer) factorised at ``rank`` (a rank-``rank``
    layer with the conv's geometry, counted like any LowRankConv2d)."""
    conv = _as_conv(conv)
    layer = LowRankConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, rank,
                          stride=conv.stride, padding=explicit_padding(conv),
                          dilation=conv.dilation, bias=False, scheme=scheme, device="meta")
    return lowrank_macs(layer, input_hw or NOMINAL_HW)[0]


def is_cheaper(conv: nn.Module, scheme: str, rank, input_hw=None) -> bool:
    """Whether ``conv`` factorised at ``rank`` costs fewer MACs than ``conv`` itself."""
    return factorised_macs(conv, scheme, rank, input_hw) < dense_macs(conv, input_hw)


def conv_costs(model: nn.Module, example_input: torch.Tensor,
               linear: bool = False) -> list[ConvCost]:
    """Per-conv MACs (per sample) and parameters, in forward order, from one forward pass of
    ``example_input`` (no gradients; BatchNorm statistics and the train/eval mode untouched).
    ``linear``: count the linear layers too, each as a 1x1 conv on the rows of its input (the
    cost model of the ``pointwise`` scheme; otherwise the TRP papers' conv MACs)."""
    costs: list[ConvCost] = []
    handles = []

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            if isinstance(module, (nn.Linear, LowRankLinear)):
                hw = (x[0].numel() // x.shape[-1] if x.dim() > 1 else 1, 1)
            else:
                hw = tuple(x.shape[-2:])
            if isinstance(module, FactorisedLayer):
                macs, out = lowrank_macs(module, hw)
            else:
                macs, out = conv2d_macs(_as_conv(module), hw)
            params = sum(p.numel() for p in module.parameters(recurse=False))
            costs.append(ConvCost(name, hw, out, macs, params))
        return record

    kinds = (nn.Conv2d, LowRankConv2d) + ((nn.Linear, LowRankLinear) if linear else ())
    for name, module in model.named_modules():
        if isinstance(module, kinds):
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


def conv_macs(model: nn.Module, example_input: torch.Tensor, linear: bool = False) -> int:
    """Total conv MACs per sample (with ``linear``, linear layers' too)."""
    return sum(c.macs for c in conv_costs(model, example_input, linear))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
