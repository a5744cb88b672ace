"""BatchNorm adaptation: the running statistics of a compressed model's BatchNorm layers
re-estimated on calibration data (docs/compression.md, "BatchNorm adaptation").

A factorised layer's outputs differ from the dense layer's, and every BatchNorm after it still
normalises by the dense model's running mean and variance: the errors compound through the
network, and a model whose every layer kept most of its energy can fall to chance accuracy.
Compression tools with calibration data adapt them: reset, then one pass over the data in
training mode with a cumulative average (momentum None), the weights untouched.
"""

from __future__ import annotations

import torch
from torch import nn

BATCHNORM = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, BATCHNORM) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimates, in place, the running mean and variance of every BatchNorm layer of
    ``model`` as their average over ``batches`` ((inputs, labels) pairs; the labels are not
    used), every other module in eval mode; every module's mode and momentum are restored.
    Returns the number of layers adapted."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None          # a cumulative average over the batches
            m.train()
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return len(layers)
