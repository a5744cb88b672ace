"""Small models that tests in more than one folder build."""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """A stem, a stride-2 conv with BatchNorm, a grouped conv and a 1x1 conv (neither
    decomposable) and a 1x3 conv (decomposable), and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=2),     # grouped: left alone
            nn.Conv2d(16, 32, 1),                          # 1x1: left alone
            nn.Conv2d(32, 32, (1, 3), padding=(0, 1)),     # 1x3: decomposable
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def with_1x1_kernels(model: nn.Module) -> nn.Module:
    """``model`` with every conv of a larger kernel (groups 1, 'same'-style padding) replaced,
    in place, by a 1x1 conv with its channels, stride, bias, device and dtype: the same layers
    and output sizes, every one of them a layer of the ``pointwise`` scheme."""
    from trp_kernels.compression import is_decomposable

    for name, m in list(model.named_modules()):
        if is_decomposable(m):
            model.set_submodule(name, nn.Conv2d(
                m.in_channels, m.out_channels, 1, m.stride, bias=m.bias is not None,
                device=m.weight.device, dtype=m.weight.dtype))
    return model


def conv_with(W, bias=None, **kwargs):
    """An nn.Conv2d (same dtype) whose weight is W [N, C, kh, kw] and bias ``bias``."""
    conv = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2:], bias=bias is not None,
                     **kwargs).to(W.dtype)
    with torch.no_grad():
        conv.weight.copy_(W)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def small_resnet(device="cpu"):
    """ResNet-20 for 8x8 single-channel images (one downsampling stage), as the trainer builds
    it for digits."""
    from trp_kernels.models import resnet20

    return resnet20(in_channels=1, stage_strides=(1, 1, 2)).to(device)
