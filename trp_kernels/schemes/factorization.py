"""Factorising dense conv weights into the factors of a low-rank scheme by the rank rule of
``truncated_svd`` (docs/design.md, "Rank rules"). The shapes and matrix views are the scheme
registry's (geometry.py); the functions here that take the scheme by name (``weight_to_matrix``,
``factor_shapes``, ...) are shorthands for its methods.

One batched SVD call serves a whole stack of same-shaped weights: channel / spatial one call on
the scheme's matrices; tucker2 one call per mode unfolding (HOSVD), plus optional HOOI sweeps;
decoupled one call on every filter of every layer.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..ops import checks
from ..ops.svd import truncated_svd
from . import geometry
from .matrix_views import IN_MODE, OUT_MODE, weight_as_conv


# -- the geometry by scheme name ----------------------------------------------------------------
def _matrix_scheme(scheme: str):
    s = geometry.scheme(scheme)
    if len(s.views) != 1:
        raise ValueError(f"scheme '{scheme}' views a weight as {len(s.views)} matrices, not one")
    return s


def matrix_shape(weight_shape, scheme: str) -> tuple[int, ...]:
    return _matrix_scheme(scheme).views[0].shape(weight_shape)


def full_rank(weight_shape, scheme: str):
    return geometry.scheme(scheme).full_rank(weight_shape)


def factor_shapes(weight_shape, rank, scheme: str):
    return geometry.scheme(scheme).factor_shapes(weight_shape, rank)


def weight_to_matrix(W: torch.Tensor, scheme: str) -> torch.Tensor:
    """The scheme's matrix of W (channel: a view for a contiguous W)."""
    return _matrix_scheme(scheme).views[0].to_matrix(W)


def matrix_to_weight(M: torch.Tensor, weight_shape, scheme: str) -> torch.Tensor:
    """Inverse of weight_to_matrix; weight_shape is (N, C, kh, kw)."""
    return _matrix_scheme(scheme).views[0].to_weight(M, weight_shape)


def factors_from_svd(U, S, V, rank: int, weight_shape, scheme: str):
    """The factors of one layer from the SVD of its matrix, split as sqrt(S) on each side
    (channel, spatial, decoupled)."""
    root = S[..., :rank].clamp_min(0).sqrt().unsqueeze(-2)
    return _matrix_scheme(scheme).factors_from_matrix(U[..., :rank] * root, V[..., :rank] * root,
                                                      weight_shape)


def factor_matrices(*factors_and_scheme):
    """The factor matrices of a layer's factors (``factor_matrices(weight1, weight2, scheme)``):
    (L [m, r], R [n, r]) with L @ R.T the scheme's matrix for channel and spatial."""
    *factors, scheme = factors_and_scheme
    return geometry.scheme(scheme).orthogonal_factors(*factors)


def full_weight(*factors_and_scheme) -> torch.Tensor:
    """The dense [N, C, kh, kw] weight of a layer's factors (``full_weight(w1, w2, scheme)``)."""
    *factors, scheme = factors_and_scheme
    return geometry.scheme(scheme).full_weight(*factors)


def matrix_svds(convs: list[nn.Module], scheme: str) -> list[tuple]:
    """(U, S, V) of each layer's matrix (untruncated; a linear layer is a 1x1 conv); layers of
    one weight shape, dtype and device are stacked into one ``truncated_svd`` call."""
    groups = defaultdict(list)
    for i, conv in enumerate(convs):
        groups[(tuple(conv.weight.shape), conv.weight.dtype, conv.weight.device)].append(i)
    svds: list[tuple | None] = [None] * len(convs)
    with torch.no_grad():
        for indices in groups.values():
            stack = torch.stack([weight_as_conv(convs[i].weight.detach()) for i in indices])
            if stack.dtype not in (torch.float32, torch.float64):
                stack = stack.float()
            U, S, V, _ = truncated_svd(weight_to_matrix(stack, scheme))
            for j, i in enumerate(indices):
                svds[i] = (U[j], S[j], V[j])
    return svds  # type: ignore[return-value]


# -- decomposition --------------------------------------------------------------------------------
def _work(W: torch.Tensor) -> torch.Tensor:
    """float32 / float64 copy for the SVD op (half precision goes via float32)."""
    dtype = W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32
    return W.detach().to(dtype)


def decompose_weights(W: torch.Tensor, scheme: str = "channel", energy=None, threshold=None,
                      rank=None, hooi_iterations: int = 0, exact_rank: bool = False):
    """The factors of every weight of a stack W [B, N, C, kh, kw], as a list of B tuples in the
    scheme's factor order, each at the rank the rule gives that weight.

    rank: an upper bound (the scheme's rank: an int, or for tucker2 an int or a pair (r_in,
        r_out)), at most the full rank. With ``exact_rank`` every layer gets exactly ``rank``
        (components past a weight's numerical rank are zero).
    hooi_iterations: tucker2 only: HOOI sweeps after the HOSVD, kept for a layer only where they
        lower its reconstruction error.
    """
    s = geometry.scheme(scheme)
    checks.tensor(W, "weight")
    if W.dim() != 5:
        raise ValueError(f"weights must be a stack [B, N, C, kh, kw], got shape {tuple(W.shape)}")
    if rank is not None:
        rank = s.check_rank(rank, W.shape)
    elif exact_rank:
        raise ValueError("exact_rank needs a rank")
    if isinstance(hooi_iterations, bool) or not isinstance(hooi_iterations, int):
        raise TypeError(f"hooi_iterations must be an int, got {hooi_iterations!r}")
    if hooi_iterations < 0 or (hooi_iterations and s.name != "tucker2"):
        raise ValueError(f"hooi_iterations must be >= 0, and 0 unless scheme is 'tucker2'; got "
                         f"{hooi_iterations} for scheme '{s.name}'")
    work = _work(W)
    caps = s.rank_parts(rank) if rank is not None else (None,) * len(s.views)
    svds = [truncated_svd(view.to_matrix(work), energy=energy, threshold=threshold,
                          max_rank=cap) for view, cap in zip(s.views, caps)]
    if s.name == "tucker2":
        layers = _tucker2_factors(s, work, svds, caps if exact_rank else None, hooi_iterations)
    else:
        layers = []
        U, S, V, ranks = svds[0]
        for b in range(W.shape[0]):
            # decoupled: the layer's rank is its filters' largest; the rest stay zero-padded
            r = caps[0] if exact_rank else int(ranks[b].max())
            layers.append(factors_from_svd(U[b], S[b], V[b], r, W.shape[1:], s.name))
    return [tuple(f.to(W.dtype) for f in factors) for factors in layers]


def _tucker2_factors(s, W, svds, exact, hooi_iterations):
    (U_in, _, _, r_in), (U_out, _, _, r_out) = svds
    ranks = [(int(a), int(b)) for a, b in zip(r_in, r_out)] if exact is None else \
        [tuple(exact)] * W.shape[0]
    keep_in = _leading(U_in.shape[-1], [r[0] for r in ranks], U_in)
    keep_out = _leading(U_out.shape[-1], [r[1] for r in ranks], U_out)
    U_in, U_out = U_in * keep_in, U_out * keep_out          # zero past each layer's ranks
    if hooi_iterations:
        U_in, U_out = _hooi(s, W, U_in, U_out, keep_in, keep_out, hooi_iterations)
    core = s.core_of(W, U_in, U_out)
    return [s.factors_from_bases(U_in[b, :, :ri], core[b, :ro, :ri], U_out[b, :, :ro])
            for b, (ri, ro) in enumerate(ranks)]


def _leading(k: int, widths, like: torch.Tensor) -> torch.Tensor:
    """[B, 1, k] mask of each layer's first ``widths[b]`` columns."""
    cols = torch.arange(k, device=like.device)
    widths = torch.tensor(widths, device=like.device)
    return (cols < widths[:, None]).to(like.dtype)[:, None, :]


def _hooi(s, W, U_in, U_out, keep_in, keep_out, iterations):
    """Higher-order orthogonal iteration at fixed ranks: each basis becomes the leading
    singular vectors of W projected on the other's. Batched over the stack; per layer the
    refined bases are kept only where they lower the error ||W||^2 - ||G||^2."""
    def captured(a, b):      # ||G||^2 = the energy the bases keep
        return s.core_of(W, a, b).square().sum((-4, -3, -2, -1))

    best_in, best_out, best = U_in, U_out, captured(U_in, U_out)
    for _ in range(iterations):
        # W x_N U_out^T, unfolded along C: its leading left singular vectors are the new U_in
        Y = torch.einsum("bno,bncij->bocij", U_out, W)
        U_in = truncated_svd(IN_MODE.to_matrix(Y))[0] * keep_in
        Z = torch.einsum("bcp,bncij->bnpij", U_in, W)
        U_out = truncated_svd(OUT_MODE.to_matrix(Z))[0] * keep_out
    refined = captured(U_in, U_out)
    better = (refined > best)[:, None, None]
    return torch.where(better, U_in, best_in), torch.where(better, U_out, best_out)


def decompose_weight(W: torch.Tensor, scheme: str = "channel", energy=None, threshold=None,
                     rank=None, hooi_iterations: int = 0):
    """Factors of one dense weight [N, C, kh, kw] by the rank rule; ``rank`` is an upper bound
    that must not exceed the full rank. Half-precision weights are factorised in float32."""
    geometry.scheme(scheme)
    checks.tensor(W, "weight")
    if W.dim() != 4:
        raise ValueError(f"weight must be 4-D [N, C, kh, kw], got shape {tuple(W.shape)}")
    return decompose_weights(W.unsqueeze(0), scheme, energy, threshold, rank,
                             hooi_iterations)[0]
