"""A MobileNetV2-style network (Sandler et al. 2018) for CIFAR-sized (32x32) and digits (8x8)
inputs: a 3x3 stem conv, inverted-residual blocks (1x1 expansion, 3x3 depthwise conv, linear 1x1
projection, a residual where shapes allow), a 1x1 conv to 256 channels, global average pooling
and a linear classifier.

Like the ImageNet MobileNets it spends nearly all its MACs in 1x1 convs: the only k x k conv
with groups 1 is the stem, so the TRP schemes of k x k convs find nothing to factorise and the
``pointwise`` scheme is the one that compresses it (docs/compression.md, "1x1 convolutions and
linear layers"). The stem and the classifier stay dense by default (``never_decomposed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, blocks n, stage) per group of blocks, as in the paper's
# table 2 with its wide stages (160, 320) left out for small inputs; stage i in 0..2 takes its
# first block's stride from stage_strides[i], None means stride 1.
BLOCKS = ((1, 16, 1, None), (6, 24, 2, 0), (6, 32, 3, 1), (6, 64, 3, 2), (6, 96, 2, None))
STEM_WIDTH, HEAD_WIDTH = 32, 256


class InvertedResidual(nn.Module):
    """1x1 expansion to ``expansion`` times the width (none when it is 1), 3x3 depthwise conv
    with the stride, 1x1 projection without activation; the input is added back when the block
    keeps both resolution and width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        if expansion != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn_expand = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn_depthwise = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "expand"):
            out = F.relu6(self.bn_expand(self.expand(out)))
        out = F.relu6(self.bn_depthwise(self.depthwise(out)))
        out = self.bn_project(self.project(out))
        return x + out if self.residual else out


class CifarMobileNetV2(nn.Module):
    """``stage_strides``: the strides of the first block of the 24-, 32- and 64-channel stages;
    (1, 2, 2) for 32x32 inputs (32 -> 16 -> 8 pixels), (1, 1, 2) for 8x8 digits (8 -> 4)."""

    never_decomposed = ("conv1", "fc")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, stage_strides=(1, 2, 2)):
        super().__init__()
        if len(stage_strides) != 3 or any(s not in (1, 2) for s in stage_strides):
            raise ValueError(f"stage_strides must be three strides of 1 or 2, got {stage_strides}")
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        blocks, width = [], STEM_WIDTH
        for expansion, out_channels, count, stage in BLOCKS:
            for i in range(count):
                stride = stage_strides[stage] if stage is not None and i == 0 else 1
                blocks.append(InvertedResidual(width, out_channels, stride, expansion))
                width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(width, HEAD_WIDTH, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(HEAD_WIDTH)
        self.fc = nn.Linear(HEAD_WIDTH, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn_head(self.head(self.blocks(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mobilenetv2(**kwargs) -> CifarMobileNetV2:
    return CifarMobileNetV2(**kwargs)
