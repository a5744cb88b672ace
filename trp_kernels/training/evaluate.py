"""Test accuracy of a model, the figure every method and report is judged by."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageData, test_batches


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, device, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) on the test split, in eval mode."""
    training = model.training
    model.eval()
    correct = 0
    for x, y in test_batches(data, batch_size, device):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(training)
    return correct / len(data.test_y)
