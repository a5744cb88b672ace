"""The composite SVD path: truncated SVD and TRP projection built from torch calls only, so it
runs on any device torch supports (``TRP_SVD_IMPL=eigh``; backends.py chooses the path).

Algorithm, per matrix W (m x n), in float64 whatever the input dtype; A = the k x L orientation
of W (k = min(m, n), L = max(m, n); A = W if m <= n, else W^T):

1. Non-finite matrices are flagged and replaced by zeros (their outputs become NaN and rank -1
   at the end, as the CUDA op does); A is multiplied by 2^-e, e the exponent of its largest
   magnitude, so that the Gram matrix can neither overflow nor underflow (exact: a power of two).
2. G = A A^T (k x k) and ``torch.linalg.eigh(G)`` = Q diag(lambda) Q^T (or cuSOLVER's batched
   eigensolver, by ``TRP_EIGH_IMPL``: backends.py).
3. Long side: y_i = A^T q_i, and s_i = ||y_i||. Why the norm and not sqrt(lambda_i): lambda_i
   carries an absolute error of about eps lambda_1, so sqrt(lambda_i) errs by eps s_1^2 / s_i
   (a null direction reads ~1e-8 s_1), whereas the error of q_i along a direction j,
   ~eps lambda_1 / |lambda_i - lambda_j|, enters ||y_i||^2 only squared: values the eigensolver
   resolves (s_i well above sqrt(eps) s_1 ~ 1e-8 s_1) come out to about eps s_1, and null
   directions read ~eps s_1, as with LAPACK's SVD. Limit: values below ~sqrt(eps) s_1 are
   not resolved by a float64 Gram matrix at all; their eigenvectors mix within that cluster and
   each reads somewhere inside it, i.e. to an absolute error of up to ~sqrt(eps) s_1. (The
   compiled float64 kernels do better there: LAPACK's SVD on the CPU, a second Jacobi pass on
   CUDA.)
4. float32 inputs: eigenvalues at or below the noise floor (L + k) eps lambda_1 give s_i = 0
   exactly, as in the CPU kernel (csrc/cpu/svd_core.cpp), so rank-deficient float32 matrices
   report exact zeros. float64 inputs keep every value (like LAPACK's SVD on the CPU).
5. Values sorted descending (stable), the rank rule (rank_rule.py) on the device, v_i = y_i / s_i.
   When the rule may keep values at the noise level (no energy criterion), the long-side vectors
   of values s_i <= (L + k) eps s_1 -- exact zeros, or float64 noise whose direction means
   nothing -- are replaced by an orthonormal completion (the matching columns of a Householder
   QR of the other vectors), so kept factors stay orthonormal; this changes U S V^T by at most
   that noise. Kept vectors are orthonormal to about (L + k) eps s_1^2 / (s_i s_j).
6. Entries at positions >= rank are exactly zero; W_low = U_r S_r V_r^T and subgrad = U_r V_r^T
   are formed in float64 and cast to the input dtype.

No step reads a value on the host: the rank, the ordering and the masks stay tensors. On CUDA,
``torch.linalg.eigh`` itself synchronises once per call to check convergence (torch documents
it), so ``lowrank_project_groups`` diagonalises the Gram matrices of all groups with the same k
in one eigh call.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .backends import eigh_function
from .checks import start_basis
from .rank_rule import FLOAT64_EPS, select_rank


def check_rule(energy, threshold, max_rank) -> None:
    """The value checks the compiled ops make (csrc/include/trp/checks.h), same messages."""
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if threshold is not None and not (threshold >= 0.0 and threshold < float("inf")):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    if max_rank is not None and max_rank < 0:
        raise ValueError(f"max_rank must be >= 0, got {max_rank}")


def _check_batch(W: torch.Tensor) -> None:
    if W.dim() < 2:
        raise ValueError(f"W must have at least 2 dimensions [..., m, n], got shape {tuple(W.shape)}")
    if W.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"W must be float32 or float64, got {W.dtype}")


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0^exponent as float64, built from its bits (exact on every device; |exponent| <= 1022)."""
    return ((exponent.to(torch.int64) + 1023) << 52).view(torch.float64)


def _times_power_of_two(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """x * 2^exponent (exponent broadcast against x), exactly: in two halves, so that neither
    factor leaves the normal range for the exponents of subnormal or huge float64 magnitudes."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    return x * _power_of_two(half) * _power_of_two(exponent - half)


class _Factors(NamedTuple):
    """Float64 SVD factors of a batch [B] of oriented k x L matrices, exact zeros past the rank;
    short [B, k, k], sigma [B, k], long [B, L, k], rank int64 [B] (-1: non-finite), finite [B],
    and basis [B, k, k]: every eigenvector of the Gram matrix, in the order of sigma (the
    projection ops' ``basis``)."""

    short: torch.Tensor
    sigma: torch.Tensor
    long: torch.Tensor
    rank: torch.Tensor
    finite: torch.Tensor
    basis: torch.Tensor


def _oriented(W: torch.Tensor) -> torch.Tensor:
    """W [..., m, n] as a float64 batch [B, k, L] (the short side first), detached."""
    m, n = W.shape[-2:]
    A = W.detach().reshape(W.shape[:-2].numel(), m, n).double()
    return A if m <= n else A.mT


def _prepare(A: torch.Tensor):
    """Step 1: (scaled A with non-finite matrices zeroed, scale exponents [B], finite [B])."""
    finite = torch.isfinite(A).all(-1).all(-1)
    A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    largest = A.abs().amax(dim=(-2, -1))
    exponent = torch.frexp(largest).exponent
    exponent = torch.where(largest > 0, exponent, torch.zeros_like(exponent))
    return _times_power_of_two(A, -exponent[:, None, None]), exponent, finite


def _factors(A, eigvals, eigvecs, exponent, finite, flush_noise, rule) -> _Factors:
    """Steps 3-5 for one batch of scaled oriented matrices A [B, k, L] and the eigh of their
    Gram matrices (ascending, as torch returns them)."""
    energy, threshold, max_rank = rule
    k, L = A.shape[-2:]
    lam, Q = eigvals.flip(-1), eigvecs.flip(-1)          # descending
    Y = A.mT @ Q                                         # [B, L, k]: s_i v_i
    sigma = torch.linalg.vector_norm(Y, dim=-2)
    zero = torch.zeros((), dtype=sigma.dtype, device=sigma.device)
    if flush_noise:
        floor = lam[:, :1].clamp_min(0) * ((L + k) * FLOAT64_EPS)
        sigma = torch.where(lam > floor, sigma, zero)
    sigma, order = torch.sort(sigma, dim=-1, descending=True, stable=True)
    Q = Q.gather(-1, order[:, None, :].expand_as(Q))
    Y = Y.gather(-1, order[:, None, :].expand_as(Y))
    noise = sigma <= sigma[:, :1] * ((L + k) * FLOAT64_EPS)
    V = Y / torch.where(sigma > 0, sigma, torch.ones_like(sigma))[:, None, :]
    if energy is None:   # the rule may keep noise-level values: complete their vectors
        V = torch.where(noise[:, None, :], zero, V)
        V = torch.where(noise[:, None, :], torch.linalg.qr(V).Q, V)
    sigma = _times_power_of_two(sigma, exponent[:, None])
    rank = select_rank(sigma, energy, threshold, max_rank)
    rank = torch.where(finite, rank, torch.full_like(rank, -1))
    keep = torch.arange(k, device=A.device) < rank[:, None]        # nothing kept at rank -1
    return _Factors(Q * keep[:, None, :], sigma * keep, V * keep[:, None, :], rank, finite, Q)


def _factor_batches(Ws: Sequence[torch.Tensor], rule) -> list[_Factors]:
    """_Factors of several batches W [..., m, n]; the Gram matrices of batches with the same k
    go through one eigh call (one convergence check, i.e. one synchronisation on CUDA)."""
    out: list[_Factors | None] = [None] * len(Ws)
    prepared, by_k = {}, {}
    for i, W in enumerate(Ws):
        A = _oriented(W)
        B, k, L = A.shape
        if B == 0 or k == 0:   # nothing to decompose: rank 0, empty or all-zero factors
            out[i] = _Factors(A.new_zeros(B, k, k), A.new_zeros(B, k), A.new_zeros(B, L, k),
                              torch.zeros(B, dtype=torch.int64, device=A.device),
                              torch.ones(B, dtype=torch.bool, device=A.device),
                              A.new_zeros(B, k, k))
            continue
        prepared[i] = _prepare(A)
        by_k.setdefault(k, []).append(i)
    for members in by_k.values():
        grams = [prepared[i][0] @ prepared[i][0].mT for i in members]
        eigh = eigh_function(grams[0].device)
        lam, Q = eigh(torch.cat(grams) if len(grams) > 1 else grams[0])
        sizes = [G.shape[0] for G in grams]
        for i, l, q in zip(members, lam.split(sizes), Q.split(sizes)):
            A, exponent, finite = prepared[i]
            out[i] = _factors(A, l, q, exponent, finite, Ws[i].dtype == torch.float32, rule)
    return out  # type: ignore[return-value]


def _nan_where_nonfinite(x: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    mask = finite.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x, torch.full((), float("nan"), dtype=x.dtype, device=x.device))


def truncated_svd(W: torch.Tensor, energy=None, threshold=None, max_rank=None):
    """(U, S, V, rank) of ``svd.truncated_svd`` by the composite path; non-finite
    matrices get rank -1 and NaN factors (the caller raises)."""
    _check_batch(W)
    check_rule(energy, threshold, max_rank)
    *batch, m, n = W.shape
    k = min(m, n)
    (f,) = _factor_batches([W], (energy, threshold, max_rank))
    left, right = (f.short, f.long) if m <= n else (f.long, f.short)
    U = _nan_where_nonfinite(left, f.finite).to(W.dtype).reshape(*batch, m, k)
    S = _nan_where_nonfinite(f.sigma, f.finite).to(W.dtype).reshape(*batch, k)
    V = _nan_where_nonfinite(right, f.finite).to(W.dtype).reshape(*batch, n, k)
    return U, S, V, f.rank.reshape(batch)


def _projection(W: torch.Tensor, f: _Factors):
    m, n = W.shape[-2:]
    low = (f.short * f.sigma[:, None, :]) @ f.long.mT     # oriented: k x L
    sub = f.short @ f.long.mT
    if m > n:
        low, sub = low.mT, sub.mT
    low = _nan_where_nonfinite(low, f.finite).to(W.dtype).contiguous().reshape(W.shape)
    sub = _nan_where_nonfinite(sub, f.finite).to(W.dtype).contiguous().reshape(W.shape)
    k = min(m, n)
    basis = _nan_where_nonfinite(f.basis, f.finite).reshape(*W.shape[:-2], k, k)
    return low, sub, f.rank.reshape(W.shape[:-2]), basis


def lowrank_project(W: torch.Tensor, energy=None, threshold=None, max_rank=None, basis=None):
    """(W_low, subgrad, rank, basis) of ``svd.lowrank_project`` by the composite path. A start
    ``basis`` is checked and not used: eigh has no use for one."""
    _check_batch(W)
    check_rule(energy, threshold, max_rank)
    start_basis(W, basis, "basis")
    (f,) = _factor_batches([W], (energy, threshold, max_rank))
    return _projection(W, f)


def lowrank_project_groups(groups: Sequence[torch.Tensor], energy=None, threshold=None,
                           max_rank=None, basis=None):
    """Lists (W_low, subgrad, rank, basis) of ``lowrank_project`` of every group, with one eigh
    call per distinct k. Start bases (``basis``: None or one per group) are checked, not used."""
    for W in groups:
        _check_batch(W)
    check_rule(energy, threshold, max_rank)
    if basis is not None:
        if len(basis) != len(groups):
            raise ValueError(f"basis must have one entry per group of W ({len(groups)}), "
                             f"got {len(basis)}")
        for i, (W, b) in enumerate(zip(groups, basis)):
            start_basis(W, b, f"basis[{i}]")
    factors = _factor_batches(groups, (energy, threshold, max_rank))
    outs = [_projection(W, f) for W, f in zip(groups, factors)]
    return tuple([o[i] for o in outs] for i in range(4))
