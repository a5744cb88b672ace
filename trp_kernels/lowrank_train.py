"""Low-rank training from scratch (ELRT, Sui et al. 2024): the factors are the parameters from
step 0 and no full-size weight is ever stored.

    model = resnet20()
    make_lowrank(model, scheme="channel", rank=0.25)       # spectral init from the fresh weights
    ...
    loss = criterion(model(x), y) + 1e-3 * orthogonality_penalty(model)

``make_lowrank`` turns every decomposable conv of a freshly built model into a LowRankConv2d
whose factors are the rank-r truncated SVD of the conv's own fresh initialisation: that is
ELRT's spectral initialisation, and it keeps the model's initialisation scheme (for this
library's ResNets, Kaiming normal) instead of imposing another.

Each layer computes M = L R^T with L and R its two factors seen as matrices (for the channel
scheme L = weight2 as [N, r] and R^T = weight1 as [r, C*kh*kw]). The penalty
||L^T L - I||_F^2 + ||R^T R - I||_F^2 keeps the r directions of each factor orthonormal, so the
factorisation stays well conditioned while it trains. It also pulls each layer's singular
values towards 1, which costs nothing in a network that normalises every conv's output
(BatchNorm, as in the ResNets here).
"""

from __future__ import annotations

import torch
from torch import nn

from .decompose import DecompositionReport, decompose_model
from .factorization import factor_matrices
from .layers import LowRankConv2d


def make_lowrank(model: nn.Module, scheme: str = "channel", rank: int | float = 0.5, skip=None,
                 example_input: torch.Tensor | None = None) -> DecompositionReport:
    """Replaces, in place, every decomposable conv of a freshly initialised ``model`` (except
    those named in ``skip``; None means the model's ``never_decomposed``) by a LowRankConv2d of
    rank ``rank``: an int (capped at each layer's full rank) or a fraction in (0, 1] of each
    layer's full rank, rounded up. Returns the decomposition report."""
    if rank is None:
        raise ValueError("rank is required for low-rank training (an int, or a fraction of each "
                         "layer's full rank in (0, 1])")
    return decompose_model(model, scheme, rank=rank, skip=skip, example_input=example_input)


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over the LowRankConv2d layers of ``model`` of ||L^T L - I||_F^2 + ||R^T R - I||_F^2
    (differentiable; a zero tensor when there is none)."""
    total = None
    for layer in model.modules():
        if not isinstance(layer, LowRankConv2d) or layer.rank == 0:
            continue
        eye = torch.eye(layer.rank, device=layer.weight1.device, dtype=layer.weight1.dtype)
        for factor in factor_matrices(layer.weight1, layer.weight2, layer.scheme):
            term = (factor.T @ factor - eye).square().sum()
            total = term if total is None else total + term
    if total is None:
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return total
