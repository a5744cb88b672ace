"""ResNet-18 and ResNet-50 for ImageNet-sized inputs, layer for layer (and name for name) the
torchvision networks (ResNet v1.5: a bottleneck downsamples in its 3x3 conv), written here
because no torchvision build exists for every torch this library supports.

The 7x7 stem conv stays dense under TRP, as in the papers; 1x1 convs are never factorised
(``decompose.is_decomposable``), so TRP acts on the 3x3 convs.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(in_channels, out_channels, kernel_size, stride=1):
    return (nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _downsample(in_channels, out_channels, stride):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))


class ImageNetResNet(nn.Module):
    never_decomposed = ("conv1", "fc")

    def __init__(self, block, blocks_per_stage, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        stages = []
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stage = []
            for j in range(blocks):
                stage.append(block(channels, width, 2 if i > 0 and j == 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
