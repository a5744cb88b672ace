"""A classifier's top-1 accuracy and mean cross-entropy on labelled data: the figures by which a
compression is judged on real data (``decompose_model``'s ``eval_data``), by which the ranks
are chosen with ``select="accuracy"`` (sensitivity.py), and by which the trainer evaluates.

Labelled data is given as a pair ``(inputs, labels)`` of tensors ([B, ...] and [B] int64) or
as an iterable of such pairs (a DataLoader, a list of batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import batchnorm_layers

# Images per forward pass when the data is given as one pair of tensors.
BATCH = 256


@dataclass(frozen=True)
class Accuracy:
    top1: float       # fraction of the samples whose top-1 class is the label
    loss: float       # mean cross-entropy
    samples: int


def labelled_batches(data, argument: str = "eval_data") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``data`` as a list of (inputs, labels) batches, checked: ValueError/TypeError naming
    ``argument`` otherwise."""
    if isinstance(data, (tuple, list)) and len(data) == 2 \
            and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        batches = [(inputs[i:i + BATCH], labels[i:i + BATCH])
                   for i in range(0, len(inputs), BATCH)]
        if len(inputs) != len(labels):
            raise ValueError(f"{argument} has {len(inputs)} inputs but {len(labels)} labels")
    else:
        try:
            batches = list(data)
        except TypeError:
            raise TypeError(f"{argument} must be a pair (inputs, labels) of tensors or an "
                            f"iterable of such pairs, got {type(data).__name__}") from None
    if not batches:
        raise ValueError(f"{argument} holds no samples")
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise TypeError(f"{argument} must give (inputs, labels) pairs of tensors, got "
                            f"{type(batch).__name__}")
        x, y = batch
        if y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
            raise ValueError(f"{argument}: labels must be int64 [B] beside inputs [B, ...], got "
                             f"{y.dtype} {list(y.shape)} beside {list(x.shape)}")
    return batches


@torch.no_grad()
def measure(model: nn.Module, batches, batch_statistics: bool = False) -> Accuracy:
    """Top-1 accuracy and mean cross-entropy of ``model`` (in eval mode; every module's mode is
    restored) on ``batches`` of (inputs, labels), each batch on the model's device already or
    moved there. ``batch_statistics``: the BatchNorm layers normalise by each batch's own
    statistics, as they would after BatchNorm adaptation on these batches (batchnorm.py),
    without one; their running statistics stay as they were."""
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    layers = batchnorm_layers(model) if batch_statistics else []
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    correct, loss, seen = 0, 0.0, 0
    try:
        model.eval()
        for m in layers:
            m.train()
            m.momentum = 0.0           # normalise by the batch; leave the running statistics
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            out = model(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ValueError(f"the model gives {type(out).__name__} "
                                 f"{list(getattr(out, 'shape', []))} for a batch; top-1 "
                                 f"accuracy needs [B, classes] scores")
            if int(y.max()) >= out.shape[1]:
                raise ValueError(f"a label is {int(y.max())}, but the model gives "
                                 f"{out.shape[1]} class scores")
            correct += int((out.argmax(1) == y).sum())
            loss += float(F.cross_entropy(out.double(), y, reduction="sum"))
            seen += len(y)
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        for m, training in modes.items():
            m.training = training
    return Accuracy(correct / seen, loss / seen, seen)
