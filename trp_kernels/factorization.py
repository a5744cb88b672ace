"""The two TRP views of a conv weight W [N, C, kh, kw] as a matrix, and the factor pair that a
truncated SVD of that matrix gives (docs/design.md section 2). All functions accept extra leading
batch dimensions, so a group of same-shaped layers is one call.

channel: M = W.reshape(N, C*kh*kw)                      weight1 [r, C, kh, kw], weight2 [N, r, 1, 1]
spatial: M = W.permute(1, 2, 0, 3).reshape(C*kh, N*kw)  weight1 [r, C, kh, 1],  weight2 [N, r, 1, kw]
"""

from __future__ import annotations

import torch

from . import _checks
from .svd import truncated_svd


def matrix_shape(weight_shape, scheme: str) -> tuple[int, int]:
    N, C, kh, kw = weight_shape[-4:]
    return (N, C * kh * kw) if scheme == "channel" else (C * kh, N * kw)


def full_rank(weight_shape, scheme: str) -> int:
    return min(matrix_shape(weight_shape, scheme))


def factor_shapes(weight_shape, rank: int, scheme: str):
    N, C, kh, kw = weight_shape[-4:]
    if scheme == "channel":
        return (rank, C, kh, kw), (N, rank, 1, 1)
    return (rank, C, kh, 1), (N, rank, 1, kw)


def weight_to_matrix(W: torch.Tensor, scheme: str) -> torch.Tensor:
    """The scheme's matrix of W. In the channel scheme (and for a contiguous W) it is a view:
    an in-place change of one shows in the other."""
    *batch, N, C, kh, kw = W.shape
    if scheme == "channel":
        return W.reshape(*batch, N, C * kh * kw)
    b = len(batch)
    return W.permute(*range(b), b + 1, b + 2, b, b + 3).reshape(*batch, C * kh, N * kw)


def matrix_to_weight(M: torch.Tensor, weight_shape, scheme: str) -> torch.Tensor:
    """Inverse of weight_to_matrix; weight_shape is (N, C, kh, kw)."""
    N, C, kh, kw = weight_shape[-4:]
    batch = M.shape[:-2]
    if scheme == "channel":
        return M.reshape(*batch, N, C, kh, kw)
    b = len(batch)
    return M.reshape(*batch, C, kh, N, kw).permute(*range(b), b + 2, b, b + 1, b + 3).contiguous()


def factors_from_svd(U, S, V, rank: int, weight_shape, scheme: str):
    """(weight1, weight2) of one layer from the SVD of its matrix, split as sqrt(S) on each side."""
    N, C, kh, kw = weight_shape[-4:]
    root = S[:rank].clamp_min(0).sqrt()
    left = U[:, :rank] * root            # U_r sqrt(S_r)
    right = (V[:, :rank] * root).T       # sqrt(S_r) V_r^T
    if scheme == "channel":
        return right.reshape(rank, C, kh, kw).contiguous(), left.reshape(N, rank, 1, 1).contiguous()
    weight1 = left.reshape(C, kh, rank).permute(2, 0, 1)[..., None].contiguous()
    weight2 = right.reshape(rank, N, kw).permute(1, 0, 2)[:, :, None, :].contiguous()
    return weight1, weight2


def factor_matrices(weight1: torch.Tensor, weight2: torch.Tensor, scheme: str):
    """(L [m, r], R [n, r]) with L @ R.T the scheme's matrix of the weight the pair represents:
    L = U_r sqrt(S_r) and R = V_r sqrt(S_r) for a pair made by ``factors_from_svd``.
    Differentiable views of the factors."""
    r = weight1.shape[0]
    if scheme == "channel":
        return weight2.reshape(-1, r), weight1.reshape(r, -1).T
    left = weight1[..., 0].permute(1, 2, 0).reshape(-1, r)
    right = weight2[:, :, 0, :].permute(1, 0, 2).reshape(r, -1).T
    return left, right


def full_weight(weight1: torch.Tensor, weight2: torch.Tensor, scheme: str) -> torch.Tensor:
    """The dense [N, C, kh, kw] weight a factor pair represents."""
    if scheme == "channel":
        r, C, kh, kw = weight1.shape
        return (weight2.reshape(-1, r) @ weight1.reshape(r, -1)).reshape(-1, C, kh, kw)
    return torch.einsum("rci,nrj->ncij", weight1[..., 0], weight2[:, :, 0, :])


def decompose_weight(W: torch.Tensor, scheme: str = "channel", energy=None, threshold=None,
                     rank=None):
    """Factor pair of one dense weight by the rank rule; ``rank`` is an upper bound that must
    not exceed the full rank. Half-precision weights are factorised in float32."""
    _checks.scheme(scheme)
    if W.dim() != 4:
        raise ValueError(f"weight must be 4-D [N, C, kh, kw], got shape {tuple(W.shape)}")
    rank = _checks.optional_int(rank, "rank")
    k = full_rank(W.shape, scheme)
    if rank is not None and not 0 <= rank <= k:
        raise ValueError(f"rank must be in [0, {k}] (the full rank of this layer), got {rank}")
    work_dtype = W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32
    M = weight_to_matrix(W.detach().to(work_dtype), scheme)
    U, S, V, r = truncated_svd(M, energy=energy, threshold=threshold, max_rank=rank)
    r = int(r)
    weight1, weight2 = factors_from_svd(U, S, V, r, W.shape, scheme)
    return weight1.to(W.dtype), weight2.to(W.dtype)
