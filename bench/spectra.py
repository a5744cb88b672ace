"""TRP-like spectra for benchmarks: a trained (TRP) conv's singular values decay, random
init's do not. ``trp_like`` sets every decomposable conv's weight, in the scheme's matrix view,
to U diag(s) V^T with random orthonormal U, V (Householder reflections of the identity, rows
permuted) and s_i = i^(-1/2) (squared singular values decaying like 1/i), scaled to the init's
Frobenius norm."""

from __future__ import annotations

import torch

from trp_kernels.compression import decomposable_layers
from trp_kernels.schemes.factorization import matrix_shape, matrix_to_weight


def householder_columns(size, k, generator):
    """The first k columns of a random orthogonal matrix: two Householder reflections of the
    identity, O(size * k) work (a QR of a random matrix takes minutes on a loaded 2-core CPU)."""
    Q = torch.eye(size, k, dtype=torch.float64)
    for _ in range(2):
        v = torch.randn(size, 1, generator=generator, dtype=torch.float64)
        v /= v.norm()
        Q -= 2 * v @ (v.T @ Q)
    return Q[torch.randperm(size, generator=generator)]


def trp_like(model, scheme, generator, skip=None):
    """Sets every decomposable conv (outside ``skip``; None: the model's default) to a
    power-law spectrum."""
    with torch.no_grad():
        for _, conv in decomposable_layers(model, skip):
            m, n = matrix_shape(conv.weight.shape, scheme)
            k = min(m, n)
            U, V = householder_columns(m, k, generator), householder_columns(n, k, generator)
            s = torch.arange(1, k + 1, dtype=torch.float64) ** -0.5
            M = (U * s) @ V.T
            M *= conv.weight.norm().double() / M.norm()
            conv.weight.copy_(matrix_to_weight(M.float(), conv.weight.shape, scheme))
