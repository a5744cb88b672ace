"""ResNet-20/32/56 for CIFAR-sized inputs (He et al. 2016, "CIFAR-10 and Analysis"): a 3x3
conv to 16 channels, three stages of basic blocks at 16, 32 and 64 channels, global average
pooling and a linear classifier. Depth 6n + 2 with n blocks per stage.

Shortcuts are "option A" of the paper (subsample, then zero-pad the new channels), so the
network has no 1x1 convs and ResNet-20 has the well-known 0.27 M parameters; every conv except
the first is a 3x3 conv that TRP factorises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Parameter-free shortcut of a block that changes width or resolution: keeps every
    ``stride``-th pixel and zero-pads the channels from ``in_channels`` to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``stage_strides`` are the strides of the first block of each stage: (1, 2, 2) is the
    paper's network for 32x32 inputs (32 -> 16 -> 8 pixels); smaller inputs may drop a
    downsampling step to keep a useful resolution in the last stage."""

    # Names of the layers that TRP and the decompositions leave dense (the papers keep the
    # first conv dense: it has 3 input channels and little to gain).
    never_decomposed = ("conv1", "fc")

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 stage_strides=(1, 2, 2)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth}")
        if len(stage_strides) != 3 or any(s not in (1, 2) for s in stage_strides):
            raise ValueError(f"stage_strides must be three strides of 1 or 2, got {stage_strides}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        width = 16
        for stage_width, stride in zip((16, 32, 64), stage_strides):
            stage = []
            for i in range(blocks):
                stage.append(BasicBlock(width, stage_width, stride if i == 0 else 1))
                width = stage_width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(32, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(56, **kwargs)
