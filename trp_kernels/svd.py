"""Batched truncated SVD with the TRP rank rule, and the fused TRP projection.

The rank rule (docs/design.md section 3), per matrix with singular values s_1 >= ... >= s_k:
``energy`` e in (0, 1] keeps the smallest r with s_1^2 + ... + s_r^2 >= e * sum(s^2);
``threshold`` t >= 0 keeps the s_i > t; ``max_rank`` caps r. Criteria combine by taking the
smallest r; with none, r = k = min(m, n). An all-zero matrix has rank 0.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

from . import _checks
from ._ops import ops


class TruncatedSVD(NamedTuple):
    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    rank: torch.Tensor


class LowRankProjection(NamedTuple):
    W_low: torch.Tensor
    subgrad: torch.Tensor
    rank: torch.Tensor


def _rule(energy, threshold, max_rank):
    return (
        _checks.optional_real(energy, "energy"),
        _checks.optional_real(threshold, "threshold"),
        _checks.optional_int(max_rank, "max_rank"),
    )


def _raise_if_nonfinite(rank: torch.Tensor, name: str = "W") -> None:
    # Device ops cannot raise without a host synchronisation, so they mark a matrix holding
    # inf/nan with rank -1 (and NaN factors); the CPU ops raise ValueError themselves.
    bad = (rank.reshape(-1) < 0).nonzero()
    if bad.numel():
        raise ValueError(
            f"{name} holds non-finite values (inf or nan) in matrix {int(bad[0])} of the batch"
        )


def truncated_svd(W, energy=None, threshold=None, max_rank=None, *,
                  check_finite=True) -> TruncatedSVD:
    """SVD of every matrix of ``W`` ([..., m, n], float32 or float64), truncated by the rank rule.

    Returns ``(U, S, V, rank)`` with U [..., m, k], S [..., k] descending, V [..., n, k]
    (k = min(m, n)) and rank int64 [...]; entries of U, S, V at positions >= rank are exactly
    zero, so ``U @ diag(S) @ V.mT`` is the rank-r approximation. Not differentiable.

    Non-finite input raises ValueError. On CUDA that check costs one host synchronisation;
    ``check_finite=False`` skips it (the op then marks such a matrix with rank -1 and NaNs),
    which keeps a training step free of syncs and CUDA-graph capturable.

    Accuracy: on the CPU, float64 inputs get LAPACK's SVD and float32 inputs go through the
    float64 Gram matrix of the short side (csrc/cpu/svd_core.cpp), accurate to ~1e-13 s_1^2 / s_i.
    On CUDA, a float64 Gram matrix of the short side is diagonalised by a parallel Jacobi method
    (one thread block per matrix up to k = 64, blocked above), with a second Jacobi pass for
    float64 inputs so that small singular values keep float64 accuracy (docs/cuda_svd.md).
    """
    _checks.tensor(W, "W")
    out = TruncatedSVD(*ops.truncated_svd(W, *_rule(energy, threshold, max_rank)))
    if check_finite and W.device.type != "cpu":
        _raise_if_nonfinite(out.rank)
    return out


def lowrank_project(W, energy=None, threshold=None, max_rank=None, *,
                    check_finite=True) -> LowRankProjection:
    """TRP projection of every matrix of ``W``: ``W_low = U_r S_r V_r^T`` and the nuclear-norm
    sub-gradient ``subgrad = U_r V_r^T``, both shaped like ``W``, and the ranks.
    ``check_finite`` as in ``truncated_svd``."""
    _checks.tensor(W, "W")
    out = LowRankProjection(*ops.lowrank_project(W, *_rule(energy, threshold, max_rank)))
    if check_finite and W.device.type != "cpu":
        _raise_if_nonfinite(out.rank)
    return out


def lowrank_project_groups(groups: Sequence[torch.Tensor], energy=None, threshold=None,
                           max_rank=None, *, check_finite=True):
    """``lowrank_project`` of several groups (one [..., m_i, n_i] tensor each, one device) in a
    single op call: the CPU kernel pools the matrices of all groups over its threads. Returns
    lists (W_low, subgrad, rank), one entry per group."""
    groups = list(groups)
    for i, group in enumerate(groups):
        _checks.tensor(group, f"groups[{i}]")
    lows, subs, ranks = ops.lowrank_project_groups(groups, *_rule(energy, threshold, max_rank))
    if check_finite:
        for i, (group, rank) in enumerate(zip(groups, ranks)):
            if group.device.type != "cpu":
                _raise_if_nonfinite(rank, f"groups[{i}]")
    return lows, subs, ranks


def project_matrices(matrices: Sequence[torch.Tensor], energy=None, threshold=None,
                     max_rank=None, *, check_finite=True) -> list[LowRankProjection]:
    """``lowrank_project`` of a list of 2-D matrices of mixed shapes: matrices of one shape,
    dtype and device are stacked into a group, and the groups of each device are projected by
    one ``lowrank_project_groups`` call. Results come back in input order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, M in enumerate(matrices):
        _checks.tensor(M, f"matrices[{i}]")
        if M.dim() != 2:
            raise ValueError(f"matrices[{i}] must be 2-D, got shape {tuple(M.shape)}")
        groups[(tuple(M.shape), M.dtype, M.device)].append(i)
    by_device: dict[torch.device, list[list[int]]] = defaultdict(list)
    for (_, _, device), indices in groups.items():
        by_device[device].append(indices)
    results: list[LowRankProjection | None] = [None] * len(matrices)
    for index_groups in by_device.values():
        stacked = [torch.stack([matrices[i] for i in indices]) for indices in index_groups]
        lows, subs, ranks = lowrank_project_groups(stacked, energy, threshold, max_rank,
                                                   check_finite=False)
        for indices, low, sub, rank in zip(index_groups, lows, subs, ranks):
            if check_finite and rank.device.type != "cpu":   # the CPU op raises by itself
                bad = (rank < 0).nonzero()
                if bad.numel():
                    raise ValueError(f"matrices[{indices[int(bad[0])]}] holds non-finite values "
                                     "(inf or nan)")
            for j, i in enumerate(indices):
                results[i] = LowRankProjection(low[j], sub[j], rank[j])
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Pure-torch references (float64 LAPACK SVD + the rule written with tensor ops). The tests hold
# the fused ops to these; they are also a readable statement of what the ops compute.


def reference_rank(S: torch.Tensor, energy=None, threshold=None, max_rank=None) -> torch.Tensor:
    """The rank rule applied to descending singular values S [..., k]; int64 [...]."""
    k = S.shape[-1]
    S = S.double()
    rank = torch.full(S.shape[:-1], k, dtype=torch.int64, device=S.device)
    if k == 0:
        return rank
    if energy is not None:
        running = torch.cumsum(S * S, dim=-1)
        below = running < energy * running[..., -1:]
        rank = torch.minimum(rank, (below.sum(-1) + 1).clamp(max=k))
    if threshold is not None:
        rank = torch.minimum(rank, (S > threshold).sum(-1))
    if max_rank is not None:
        rank = rank.clamp(max=max_rank)
    return torch.where(S[..., 0] > 0, rank, torch.zeros_like(rank))


def reference_truncated_svd(W, energy=None, threshold=None, max_rank=None) -> TruncatedSVD:
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    rank = reference_rank(S, energy, threshold, max_rank)
    keep = torch.arange(S.shape[-1], device=S.device) < rank.unsqueeze(-1)
    U = U * keep.unsqueeze(-2)
    V = Vh.mT * keep.unsqueeze(-2)
    S = S * keep
    return TruncatedSVD(U.to(W.dtype), S.to(W.dtype), V.to(W.dtype), rank)


def reference_lowrank_project(W, energy=None, threshold=None, max_rank=None) -> LowRankProjection:
    U, S, V, rank = reference_truncated_svd(W.double(), energy, threshold, max_rank)
    low = (U * S.unsqueeze(-2)) @ V.mT
    sub = U @ V.mT
    return LowRankProjection(low.to(W.dtype), sub.to(W.dtype), rank)
