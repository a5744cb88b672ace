"""The rank rule of docs/design.md, "Rank rules" (numerical-rank tolerance included), written
with tensor ops for every device: the statement the references and the composite SVD path use.
The compiled kernels run the same rule in C++ (``select_rank`` in csrc's rank_rule.h) on the same
float64 running sum, so both cut at the same place."""

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
