"""The baselines the TRP projection is timed against (bench/bench_svd.py on any device,
bench/gpu_timings.py on a GPU): each takes the stacked groups of same-shaped layer matrices and
returns (W_low, subgrad) per group at energy 0.9.

  official_loop  the official TRP code's way: per layer torch.svd, the energy cut as a Python
                 loop over the singular values, reconstruction and sub-gradient with torch.mm
  torch_svd      batched torch.linalg.svd per group, vectorised energy cut, batched products
  torch_gram     per group: float64 Gram matrix of the short side + torch.linalg.eigh,
                 vectorised energy cut, projection with the eigenvectors (the library's CPU
                 algorithm written as plain torch)
  gram_xsyev     torch_gram with cuSOLVER's cusolverDnXsyevBatched for torch.linalg.eigh
                 (trp_kernels/ops/cusolver_eigh.py; CUDA only)
"""

from __future__ import annotations

import torch

ENERGY = 0.9


def official_loop(matrices, energy=ENERGY):
    out = []
    for M in matrices:
        U, S, V = torch.svd(M, some=True)
        sq = S ** 2
        total = torch.sum(sq)
        keep = S.numel()
        for i in range(S.numel()):
            if sq[: i + 1].sum() / total >= energy:
                keep = i + 1
                break
        Ur, Vr = U[:, :keep], V[:, :keep]
        out.append((Ur.mm(torch.diag(S[:keep])).mm(Vr.t()), Ur.mm(Vr.t())))
    return out


def energy_mask(sq):
    running = torch.cumsum(sq, dim=-1)
    rank = (running < ENERGY * running[..., -1:]).sum(-1, keepdim=True) + 1
    return (torch.arange(sq.shape[-1], device=sq.device) < rank).to(sq.dtype)


def torch_svd(stacked, driver=None):
    out = []
    for W in stacked:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False, driver=driver)
        mask = energy_mask(S * S)
        Ur = U * mask.unsqueeze(-2)
        out.append(((Ur * S.unsqueeze(-2)) @ Vh, Ur @ Vh))
    return out


def torch_gram(stacked, eigh=torch.linalg.eigh):
    out = []
    for W in stacked:
        tall = W.shape[-2] > W.shape[-1]
        A = (W.mT if tall else W).double()
        lam, Q = eigh(A @ A.mT)
        lam, Q = lam.flip(-1).clamp_min(0), Q.flip(-1)
        mask = energy_mask(lam)
        Qr = Q * mask.unsqueeze(-2)
        B = Qr.mT @ A                                  # = S_r V_r^T
        inv = torch.where(mask > 0, lam.rsqrt(), torch.zeros_like(lam))
        low, sub = Qr @ B, Qr @ (B * inv.unsqueeze(-1))
        if tall:
            low, sub = low.mT, sub.mT
        out.append((low.to(W.dtype), sub.to(W.dtype)))
    return out


def gram_xsyev(stacked):
    from trp_kernels.ops.cusolver_eigh import syev_batched

    return torch_gram(stacked, eigh=syev_batched)
