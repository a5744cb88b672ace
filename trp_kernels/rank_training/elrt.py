"""Low-rank training from scratch (ELRT, Sui et al. 2024): the factors are the parameters from
step 0 and no full-size weight is ever stored.

    model = resnet20()
    make_lowrank(model, scheme="channel", rank=0.25)       # spectral init from the fresh weights
    ...
    loss = criterion(model(x), y) + 1e-3 * orthogonality_penalty(model)

``make_lowrank`` turns every decomposable conv of a freshly built model into a LowRankConv2d
(with ``pointwise``, every 1x1 conv and linear layer too, into pointwise LowRankConv2d and
LowRankLinear layers) whose factors are the rank-r truncated SVD of the layer's own fresh
initialisation: that is
ELRT's spectral initialisation, and it keeps the model's initialisation scheme (for this
library's ResNets, Kaiming normal) instead of imposing another.

The orthogonality penalty (its terms and each scheme's factor matrices: docs/design.md, "Public
API", ``orthogonality_penalty``) keeps each layer's factor matrices A [m, r] well conditioned
while they train; the registry gives them (``orthogonal_factors``). By default tucker2 layers get
ELRT's "dso" and the others "so". For channel / spatial, orthonormal factors also pull each
layer's singular values towards 1, which costs nothing in a network that normalises every conv's
output (BatchNorm, as in the ResNets here).
"""

from __future__ import annotations

import torch
from torch import nn

from ..compression import DecompositionReport, budget, decompose_model, decomposable_layers
from ..ops import checks
from ..schemes.layer_kinds import LOWRANK_LAYERS


def make_lowrank(model: nn.Module, scheme: str = "channel", rank=0.5, skip=None,
                 example_input: torch.Tensor | None = None, target_speedup=None,
                 rank_multiple=1, pointwise=False) -> DecompositionReport:
    """Replaces, in place, every decomposable conv of a freshly initialised ``model`` (except
    those named in ``skip``; None means the model's ``never_decomposed``) by a LowRankConv2d of
    rank ``rank``: an int (capped at each layer's full rank) or a fraction in (0, 1] of each
    layer's full rank, rounded up; for tucker2 also a pair (r_in, r_out) of those. Returns the
    decomposition report.

    ``target_speedup`` t (instead of ``rank``; needs ``example_input``; channel and spatial): a
    FLOP budget for training from scratch. The spectra of fresh weights are flat, so the budget
    is met by one common rank fraction for the whole model, the largest whose conv FLOP
    speed-up is at least t (``budget.fraction_for_budget``; the report's layers hold the
    ranks it gives). ``rank_multiple`` m:
    every rank rounded up to a multiple of m, capped at the full rank. A layer whose factorised
    form is not cheaper than its conv stays a plain nn.Conv2d. ``pointwise``: the 1x1 convs and
    linear layers too, in scheme "pointwise" (``decompose_model``'s)."""
    if target_speedup is not None:
        checks.target_speedup(target_speedup)
        if rank is not None:
            raise ValueError("target_speedup chooses the ranks itself; pass it with rank=None")
        if example_input is None:
            raise ValueError("example_input is required with target_speedup")
        rank_multiple = checks.rank_multiple(rank_multiple)
        layers = decomposable_layers(model, skip, scheme=scheme, pointwise=pointwise)
        rank = budget.fraction_for_budget(model, layers, scheme, example_input, target_speedup,
                                          rank_multiple, pointwise)
        return decompose_model(model, scheme, rank=rank, example_input=example_input,
                               rank_multiple=rank_multiple, layers=[n for n, _ in layers],
                               pointwise=pointwise)
    if rank is None:
        raise ValueError("rank is required for low-rank training (an int, or a fraction of each "
                         "layer's full rank in (0, 1]), unless target_speedup is given")
    return decompose_model(model, scheme, rank=rank, skip=skip, example_input=example_input,
                           rank_multiple=rank_multiple, pointwise=pointwise)


PENALTY_KINDS = ("so", "dso")


def orthogonality_penalty(model: nn.Module, kind: str | None = None) -> torch.Tensor:
    """Sum over the low-rank layers of ``model`` of the orthogonality penalty of their
    factor matrices (module docstring): ``kind`` "so" or "dso", None for each layer's default
    ("dso" for tucker2, "so" otherwise). Differentiable; a zero tensor when there is none."""
    if kind is not None and kind not in PENALTY_KINDS:
        raise ValueError(f"kind must be 'so', 'dso' or None, got {kind!r}")
    total = None
    for layer in model.modules():
        if not isinstance(layer, LOWRANK_LAYERS):
            continue
        layer_kind = kind or layer.geometry.default_penalty
        for A in layer.geometry.orthogonal_factors(*layer.conv_factors()):
            term = _factor_penalty(A, layer_kind)
            if term is not None:
                total = term if total is None else total + term
    if total is None:
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return total


def _factor_penalty(A: torch.Tensor, kind: str):
    """The penalty of a factor matrix A [..., m, r] (summed over leading dimensions)."""
    m, r = A.shape[-2:]
    if r == 0 or m == 0:
        return None
    eye_r = torch.eye(r, device=A.device, dtype=A.dtype)
    one_sided = (A.mT @ A - eye_r).square().sum()
    if kind == "so":
        return one_sided
    eye_m = torch.eye(m, device=A.device, dtype=A.dtype)
    return (one_sided + (A @ A.mT - eye_m).square().sum()) / r
