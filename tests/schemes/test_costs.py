"""What convolutions cost: the MAC counts of dense and factorised convs (docs/design.md, "Costs
and where they live") and counting them on a model without disturbing it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trp_kernels as tk
from small_models import SmallNet
from trp_kernels.schemes import costs


def test_conv_macs_formulas():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    macs, out = costs.conv2d_macs(conv, (32, 30))
    assert out == (16, 15) and macs == 16 * 8 * 9 * 16 * 15
    for scheme in ("channel", "spatial"):
        layer = tk.LowRankConv2d(8, 16, 3, rank=5, stride=2, padding=1, scheme=scheme)
        macs, out = costs.lowrank_macs(layer, (32, 30))
        assert out == (16, 15)
        if scheme == "channel":
            assert macs == 5 * (8 * 9 + 16) * 16 * 15
        else:  # vertical conv at stride (2, 1) keeps the full width: H_mid = 16, W_mid = 30
            assert macs == 5 * 8 * 3 * 16 * 30 + 16 * 5 * 3 * 16 * 15


@pytest.mark.parametrize("kernel, dilation", [((2, 3), 1), (3, 2), ((4, 1), (1, 1)), (3, 1)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_counts_the_real_output(kernel, dilation, padding):
    """'same' with an even dilated kernel pads asymmetrically: the counter must follow PyTorch."""
    conv = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation)
    x = torch.randn(1, 2, 9, 8)
    macs, out = costs.conv2d_macs(conv, (9, 8))
    assert out == tuple(conv(x).shape[-2:])
    assert macs == 3 * 2 * conv.kernel_size[0] * conv.kernel_size[1] * out[0] * out[1]


def test_conv_costs_leave_the_model_untouched():
    model = SmallNet().train()
    bn = model.body[1]
    before = bn.running_mean.clone()
    counted = costs.conv_costs(model, torch.randn(2, 3, 16, 16))
    assert [c.name for c in counted] == ["stem", "body.0", "body.3", "body.4", "body.5"]
    assert model.training and torch.equal(bn.running_mean, before)
    assert counted[2].macs == 16 * 8 * 9 * 8 * 8      # groups divide the input channels
