"""What every test parametrizes over, and the adversarial matrices of the SVD tests."""

from __future__ import annotations

import torch

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
dtypes = [torch.float32, torch.float64]
# Tolerances of the SVD contract (DESIGN.md, core issue), relative to s_1 / ||W||.
svd_tol = {
    torch.float32: {"sigma": 1e-4, "recon": 1e-3, "ortho": 1e-2},
    torch.float64: {"sigma": 1e-10, "recon": 1e-10, "ortho": 1e-8},
}


def with_spectrum(shape, sigma, generator=None, dtype=torch.float64):
    """Matrices [..., m, n] with the singular values ``sigma`` (length <= min(m, n); the rest 0)
    and random orthonormal singular vectors."""
    *batch, m, n = shape
    k = min(m, n)
    s = torch.zeros(*batch, k, dtype=torch.float64)
    s[..., : len(sigma)] = torch.as_tensor(sigma, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, dtype=torch.float64, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, dtype=torch.float64, generator=generator))
    return ((U * s.unsqueeze(-2)) @ V.mT).to(dtype)


def adversarial(shape, dtype, seed=0):
    """(name, matrix batch) pairs: random, low-rank + noise, exactly rank-deficient, repeated
    singular values, ill-conditioned (1 .. 1e-6), zero, and scaled by 1e4 and 1e-4."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    r = max(1, k // 4)
    random = torch.randn(*shape, dtype=torch.float64, generator=g)
    cases = {
        "random": random,
        "lowrank_noise": with_spectrum(shape, torch.linspace(10, 1, r), g)
        + 1e-3 * torch.randn(*shape, dtype=torch.float64, generator=g),
        "rank_deficient": with_spectrum(shape, torch.linspace(3, 1, r), g),
        "repeated": with_spectrum(shape, [2.0] * (k // 2) + [1.0] * (k - k // 2), g),
        "ill_conditioned": with_spectrum(shape, torch.logspace(0, -6, k), g),
        "zero": torch.zeros(*shape, dtype=torch.float64),
        "huge": 1e4 * random,
        "tiny": 1e-4 * random,
    }
    return [(name, M.to(dtype)) for name, M in cases.items()]
