"""How far a compression moved a model from the dense one (docs/compression.md, "Fidelity"):
per layer, the fraction of the dense weight's spectral energy its factors keep; for the model,
on a batch, the relative error of the outputs against the dense model's and, for a classifier,
how often both pick the same top-1 class.

A FLOP budget picks ranks without looking at the outputs: at a high ``target_speedup`` a model
can keep half its layers' energy and no longer resemble the dense one. These figures say so
without labelled data; ``FidelityWarning`` is raised (as a warning) when the top-1 agreement
falls below ``AGREEMENT_WARNING``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..schemes.factorised_layer import FactorisedLayer

# Below this top-1 agreement with the dense model a decomposition warns: at 90% one input in ten
# already gets another class, more than fine-tuning usually has to win back for free.
AGREEMENT_WARNING = 0.9


class FidelityWarning(UserWarning):
    """The compressed model's outputs have moved far from the dense model's."""


@contextmanager
def warnings_silenced():
    """A block whose FidelityWarnings are not shown: for a caller that reports the figures
    itself (the report keeps them and ``DecompositionReport.fidelity_warning()``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidelityWarning)
        yield


def energy_kept(weight: torch.Tensor, layer: FactorisedLayer) -> float:
    """The fraction of ``weight``'s spectral energy (squared Frobenius norm) that ``layer``'s
    factors keep, 1 - ||W - W_r||^2 / ||W||^2: the kept squared singular values over all of
    them for a truncated SVD, ||G||^2 / ||W||^2 for tucker2's orthogonal projections. 1 for an
    all-zero weight."""
    with torch.no_grad():
        W = weight.detach().double()
        total = float(W.square().sum())
        if total == 0:
            return 1.0
        error = float((W - layer.full_weight().detach().double()).square().sum())
    return 1.0 - error / total


@dataclass(frozen=True)
class OutputFidelity:
    relative_error: float             # ||y - y_dense|| / ||y_dense|| over the batch
    top1_agreement: float | None      # classifiers ([B, K] outputs, K > 1); None otherwise
    samples: int


def model_outputs(model: nn.Module, x: torch.Tensor):
    """``model(x)`` in eval mode without gradients, every module's train/eval mode restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return model(x)
    finally:
        for m, training in modes.items():
            m.training = training


def output_fidelity(dense_outputs, outputs, samples: int) -> OutputFidelity:
    """The relative error of ``outputs`` against ``dense_outputs`` (tensors, or nested tuples,
    lists and dicts of them, compared leaf by leaf as one vector) on a batch of ``samples``
    inputs, and the top-1 agreement when both are one [B, K] tensor of class scores."""
    dense, _ = tree_flatten(dense_outputs)
    ours, _ = tree_flatten(outputs)
    pairs = [(d, o) for d, o in zip(dense, ours)
             if isinstance(d, torch.Tensor) and d.is_floating_point()]
    if not pairs:
        raise ValueError("the model's outputs hold no floating-point tensor to compare")
    reference = torch.cat([d.detach().double().flatten() for d, _ in pairs])
    difference = torch.cat([(o.detach().double() - d.detach().double()).flatten()
                            for d, o in pairs])
    norm = float(reference.norm())
    error = float(difference.norm()) / norm if norm > 0 else float(difference.norm())
    agreement = None
    if isinstance(dense_outputs, torch.Tensor) and dense_outputs.dim() == 2 \
            and dense_outputs.shape[1] > 1:
        agreement = float((outputs.argmax(1) == dense_outputs.argmax(1)).double().mean())
    return OutputFidelity(error, agreement, samples)
