"""The TRP projection of every decomposable conv of a network (random weights, energy 0.9):
W_low = U_r S_r V_r^T and the nuclear sub-gradient U_r V_r^T for all layers.

case: `<network>-<scheme>` (the layer sets of bench/layer_sets.json).
impl:
  trp            one trp::lowrank_project_groups call for all groups of same-shaped layers, the
                 compiled op (TRP_SVD_IMPL=jacobi: LAPACK kernels on CPU, Jacobi on CUDA)
  trp_eigh       the same call on the composite path (TRP_SVD_IMPL=eigh, trp_kernels/
                 svd_composite.py: float64 Gram + torch.linalg.eigh, one eigh per distinct k)
  official_loop  the official TRP code's way: per layer torch.svd, the energy cut as a Python
                 loop over the singular values, reconstruction and sub-gradient with torch.mm
  torch_svd      batched torch.linalg.svd per group, vectorised energy cut, batched products
  torch_gesvda   the same with driver="gesvda" (CUDA only)
  torch_gram     per group: float64 Gram matrix of the short side + torch.linalg.eigh,
                 vectorised energy cut, projection with the eigenvectors (our CPU algorithm
                 written as plain torch)
Groups are stacked before timing (the trainer keeps them stacked), so every impl but the
official loop times the same work.
"""

from __future__ import annotations

import pytest
import torch

from trp_kernels.ops import backends
from trp_kernels.ops.svd import lowrank_project_groups

from conftest import QUICK, devices
from layer_sets import NETWORKS, groups, weights

ENERGY = 0.9
SCHEMES = ("channel", "spatial")
IMPLS = ("trp", "trp_eigh", "official_loop", "torch_svd", "torch_gesvda", "torch_gram")
SVD_PATH = {"trp": "jacobi", "trp_eigh": "eigh"}   # TRP_SVD_IMPL of the library's impls


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


def torch_gram(stacked):
    out = []
    for W in stacked:
        tall = W.shape[-2] > W.shape[-1]
        A = (W.mT if tall else W).double()
        lam, Q = torch.linalg.eigh(A @ A.mT)
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


def trp(stacked):
    return lowrank_project_groups(stacked, energy=ENERGY, check_finite=False)


NETS = ("resnet20",) if QUICK else NETWORKS


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("network", NETS)
def test_projection(bench, network, scheme, impl, device):
    if impl == "torch_gesvda" and device != "cuda":
        pytest.skip("gesvda is a cuSOLVER driver")
    matrices = weights(network, scheme, device=device)
    stacked = groups(matrices)
    fn = {
        "trp": lambda: trp(stacked),
        "trp_eigh": lambda: trp(stacked),
        "official_loop": lambda: official_loop(matrices),
        "torch_svd": lambda: torch_svd(stacked),
        "torch_gesvda": lambda: torch_svd(stacked, driver="gesvda"),
        "torch_gram": lambda: torch_gram(stacked),
    }[impl]
    big = network in ("resnet18", "resnet50") and device == "cpu"
    with backends.forced(svd=SVD_PATH.get(impl, "auto")):
        bench(f"{network}-{scheme}", fn, device, rounds=3 if (QUICK or big) else None)
