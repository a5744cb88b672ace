"""Test accuracy of a model, the figure every method and report is judged by."""

from __future__ import annotations

from torch import nn

from ..compression import accuracy
from .data import ImageData, test_batches


def evaluate(model: nn.Module, data: ImageData, device, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) on the test split, in eval mode (compression/accuracy.py)."""
    return accuracy.measure(model, test_batches(data, batch_size, device)).top1
