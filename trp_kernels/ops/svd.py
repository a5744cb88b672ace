"""Batched truncated SVD with the rank rule, and the fused TRP projection: the Python face of
``torch.ops.trp.truncated_svd``, ``lowrank_project`` and ``lowrank_project_groups``.

The rank rule is docs/design.md, "Rank rules"; rank_rule.py states it with tensor ops and
csrc/include/trp/rank_rule.h in C++. Two implementations compute every function here to the
same contract, chosen per call by backends.py: the compiled op, and the composite path of plain
torch calls (svd_composite.py), which runs on any device. Both are plain torch ops to
``torch.compile`` and ``torch.export``. The pure-torch references at the end are what the tests
hold both paths to.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

from . import checks, svd_composite
from .backends import SvdImpl, svd_impl
from .library import ops
from .rank_rule import select_rank


class TruncatedSVD(NamedTuple):
    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    rank: torch.Tensor


class LowRankProjection(NamedTuple):
    W_low: torch.Tensor
    subgrad: torch.Tensor
    rank: torch.Tensor


class ProjectionWithBasis(NamedTuple):
    """``lowrank_project(..., return_basis=True)``: the projection and the basis to start the
    next projection of the same matrices from."""

    W_low: torch.Tensor
    subgrad: torch.Tensor
    rank: torch.Tensor
    basis: torch.Tensor


def _rule(energy, threshold, max_rank):
    return (
        checks.optional_real(energy, "energy"),
        checks.optional_real(threshold, "threshold"),
        checks.optional_int(max_rank, "max_rank"),
    )


def _k(W: torch.Tensor) -> int:
    return min(W.shape[-2:]) if W.dim() >= 2 else 0


def _marks_nonfinite(device: torch.device, k: int, path: SvdImpl | None = None) -> bool:
    """Whether the path selected for ``device`` and k (``path``, where already known) reports
    a matrix holding inf/nan with rank -1 (and NaN factors) instead of raising: every path but
    the compiled CPU op, which raises ValueError itself. A device cannot raise without a host
    synchronisation."""
    path = svd_impl(device, k) if path is None else path
    return device.type != "cpu" or path is SvdImpl.EIGH


def _raise_if_nonfinite(rank: torch.Tensor, name: str = "W") -> None:
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

    Non-finite input raises ValueError. Except on the compiled CPU op, that check reads the
    ranks on the host (one synchronisation on a device); ``check_finite=False`` skips it (such a
    matrix then gets rank -1 and NaN factors), which keeps a training step free of our syncs.

    Accuracy, by path (docs/svd_paths.md):
    * compiled op, CPU: float64 inputs get LAPACK's SVD; float32 inputs go through the float64
      Gram matrix of the short side (csrc/cpu/svd_core.cpp), accurate to ~1e-13 s_1^2 / s_i.
    * compiled op, CUDA: a float64 Gram matrix of the short side is diagonalised by a parallel
      Jacobi method (one thread block per matrix up to k = 64, blocked above), with a second
      pass for float64 inputs (docs/cuda_svd.md). Capturable in a CUDA graph.
    * composite path (``TRP_SVD_IMPL=eigh``, the CUDA default for k > 64): the float64 Gram matrix
      of the short side and ``torch.linalg.eigh``; the singular values are the norms of W^T q_i
      (or W q_i), accurate to about eps s_1 (as LAPACK's SVD) wherever the Gram matrix resolves
      them (s_i >> 1e-8 s_1), to ~1e-8 s_1 absolute below (svd_composite.py). On CUDA,
      ``torch.linalg.eigh`` synchronises once per call to check its own convergence, so this
      path cannot be captured in a CUDA graph.
    """
    return TruncatedSVD(*_run("truncated_svd", W, energy, threshold, max_rank, check_finite))


def lowrank_project(W, energy=None, threshold=None, max_rank=None, *, check_finite=True,
                    basis=None, return_basis=False):
    """TRP projection of every matrix of ``W``: ``W_low = U_r S_r V_r^T`` and the nuclear-norm
    sub-gradient ``subgrad = U_r V_r^T``, both shaped like ``W``, and the ranks.
    Path and ``check_finite`` as in ``truncated_svd``.

    Warm start (docs/svd_paths.md, "Warm start"): ``return_basis=True`` also returns ``basis``,
    float64 [..., k, k] with orthonormal columns, the short side's singular vectors largest
    first (past the rank possibly any orthonormal basis of the rest); passing it back as
    ``basis`` when projecting the same matrices after a small change lets the compiled CPU
    kernel (float32 inputs) and the CUDA kernels start from it. The result is the cold one's:
    the same ranks, the projection to the float tolerance of the contract; a start that does
    not help (stale, unrelated, not orthonormal, NaN) costs a little time and changes nothing.
    """
    checks.tensor(W, "W")
    start = checks.start_basis(W, basis, "basis")
    checks.flag(return_basis, "return_basis")
    impl = svd_composite if svd_impl(W.device, _k(W)) is SvdImpl.EIGH else ops
    out = impl.lowrank_project(W, *_rule(energy, threshold, max_rank), start)
    if check_finite and _marks_nonfinite(W.device, _k(W)):
        _raise_if_nonfinite(out[2])
    return ProjectionWithBasis(*out) if return_basis else LowRankProjection(*out[:3])


def _run(op: str, W, energy, threshold, max_rank, check_finite):
    """``op`` (truncated_svd) of W on the path backends.py picks; its last output is the rank,
    checked for the non-finite mark when ``check_finite``."""
    checks.tensor(W, "W")
    impl = svd_composite if svd_impl(W.device, _k(W)) is SvdImpl.EIGH else ops
    out = getattr(impl, op)(W, *_rule(energy, threshold, max_rank))
    if check_finite and _marks_nonfinite(W.device, _k(W)):
        _raise_if_nonfinite(out[-1])
    return out


def lowrank_project_groups(groups: Sequence[torch.Tensor], energy=None, threshold=None,
                           max_rank=None, *, check_finite=True, basis=None, return_basis=False):
    """``lowrank_project`` of several groups (one [..., m_i, n_i] tensor each, one device) in a
    single call per path: the CPU kernel pools the matrices of all groups over its threads, the
    CUDA kernels run the groups on parallel streams, and the composite path diagonalises all
    groups with the same k in one eigh call (on CUDA each group takes the path backends.py picks
    for its k). Returns lists (W_low, subgrad, rank), one entry per group, and the bases as a
    fourth list with ``return_basis=True``; ``basis``: None, or a start (or None) per group, as
    in ``lowrank_project``."""
    groups = list(groups)
    for i, group in enumerate(groups):
        checks.tensor(group, f"groups[{i}]")
    checks.flag(return_basis, "return_basis")
    if basis is not None:
        basis = list(basis)
        if len(basis) != len(groups):
            raise ValueError(f"basis must have one entry per group ({len(groups)}), "
                             f"got {len(basis)}")
        for i, b in enumerate(basis):
            checks.start_basis(groups[i], b, f"basis[{i}]")
    rule = _rule(energy, threshold, max_rank)
    # each group on its path (on CUDA the path depends on k): one call per path
    paths = [svd_impl(g.device, _k(g)) for g in groups]
    results = [None] * len(groups)
    for impl, module in ((SvdImpl.JACOBI, ops), (SvdImpl.EIGH, svd_composite)):
        picked = [i for i, path in enumerate(paths) if path is impl]
        if picked:
            starts = None if basis is None else [basis[i] for i in picked]
            out = module.lowrank_project_groups([groups[i] for i in picked], *rule, starts)
            for j, i in enumerate(picked):
                results[i] = tuple(o[j] for o in out)
    lows, subs, ranks, bases = ([r[n] for r in results] for n in range(4))
    if check_finite:
        for i, (group, rank, path) in enumerate(zip(groups, ranks, paths)):
            if _marks_nonfinite(group.device, _k(group), path):
                _raise_if_nonfinite(rank, f"groups[{i}]")
    if return_basis:
        return lows, subs, ranks, bases
    return lows, subs, ranks


def project_matrices(matrices: Sequence[torch.Tensor], energy=None, threshold=None,
                     max_rank=None, *, check_finite=True) -> list[LowRankProjection]:
    """``lowrank_project`` of a list of 2-D matrices of mixed shapes: matrices of one shape,
    dtype and device are stacked into a group, and the groups of each device are projected by
    one ``lowrank_project_groups`` call. Results come back in input order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, M in enumerate(matrices):
        checks.tensor(M, f"matrices[{i}]")
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
            if check_finite and _marks_nonfinite(rank.device, min(low.shape[-2:])):
                bad = (rank < 0).nonzero()
                if bad.numel():
                    raise ValueError(f"matrices[{indices[int(bad[0])]}] holds non-finite values "
                                     "(inf or nan)")
            for j, i in enumerate(indices):
                results[i] = LowRankProjection(low[j], sub[j], rank[j])
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Pure-torch references (float64 LAPACK SVD + the rule written with tensor ops). The tests hold
# both paths to these; they are also a readable statement of what the paths compute.


# The rank rule applied to descending singular values S [..., k]; int64 [...]. The same function
# the composite path uses (one statement of the rule in Python).
reference_rank = select_rank


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
