"""The rank rule (docs/design.md, section 1) written with tensor ops, for every device.

Per matrix with singular values s_1 >= ... >= s_k: ``energy`` e in (0, 1] keeps the smallest r
with s_1^2 + ... + s_r^2 >= (e - k * eps) * total (total = the sum of all s_i^2, eps the
float64 machine epsilon); ``threshold`` t >= 0 keeps the s_i > t; ``max_rank`` caps r.
Criteria combine by taking the smallest r; with none, r = k. An all-zero matrix has rank 0.

The slack k * eps * total of the energy cut is the rounding floor of the float64 total (a sum of
k non-negative terms is known to a relative error below (k - 1) * eps / 2): a tail under it is
indistinguishable from zero, so energy = 1 keeps the numerical rank instead of every noise
direction whose square changes the last bit of the sum.

This is the statement the references and the composite SVD path use; the compiled kernels run
the same rule in C++ (csrc/include/trp/rank_rule.h, ``select_rank``), on the same float64
running sum, so both cut at the same place.
"""

from __future__ import annotations

import torch

FLOAT64_EPS = torch.finfo(torch.float64).eps


def select_rank(S: torch.Tensor, energy=None, threshold=None, max_rank=None) -> torch.Tensor:
    """The rank rule applied to descending singular values S [..., k]; int64 [...] on S's
    device, computed without a host synchronisation."""
    k = S.shape[-1]
    S = S.double()
    rank = torch.full(S.shape[:-1], k, dtype=torch.int64, device=S.device)
    if k == 0:
        return rank
    if energy is not None:
        running = torch.cumsum(S * S, dim=-1)
        total = running[..., -1:]   # the same running sum the cut scans, as in C++
        target = (energy - k * FLOAT64_EPS) * total   # the C++ expression, same rounding
        rank = torch.minimum(rank, ((running < target).sum(-1) + 1).clamp(max=k))
    if threshold is not None:
        rank = torch.minimum(rank, (S > threshold).sum(-1))
    if max_rank is not None:
        rank = rank.clamp(max=max_rank)
    return torch.where(S[..., 0] > 0, rank, torch.zeros_like(rank))
