"""What every test parametrizes over, the adversarial matrices of the SVD tests and the SVD
contract every SVD test holds the ops to."""

from __future__ import annotations

import contextlib

import pytest
import torch

import emulated_cuda
from emulated_cuda import DEVICE as EMULATED_CUDA
from trp_kernels.ops import backends
from trp_kernels.ops.svd import reference_rank, reference_truncated_svd

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cpu_and_cuda(emulated=True):
    """Device parameters as in torchvision's tests: the CUDA case always collected, marked
    ``cuda`` (tests/conftest.py skips it without a GPU; bench/run_gpu.sh runs ``-m cuda``); then
    the same CUDA sources on the CPU emulation (tests/emulated_cuda.py) unless ``emulated`` is
    False."""
    return ("cpu", *cuda_only(emulated))


def cuda_only(emulated=True):
    """The device parameters of a check that only means something on CUDA (agreement with the
    CPU op, every kernel path): the GPU, shown as skipped where there is none, and the emulated
    device. ``emulated=False`` for checks of what the emulation does not have (CUDA graphs,
    concurrent streams, the CUDA profiler)."""
    cuda = pytest.param("cuda", marks=pytest.mark.cuda)
    if not emulated:
        return (cuda,)
    return (cuda, pytest.param(EMULATED_CUDA, marks=pytest.mark.emulated_cuda, id="emulated-cuda"))


def each_schedule(device):
    """Three contexts for the repetitions of a determinism check. On the emulated device each
    runs the threads and blocks in another order (forward, reverse, random), so that results
    equal bit for bit mean results that no order of the threads changes -- what a missing
    barrier breaks; elsewhere they do nothing."""
    if device != EMULATED_CUDA:
        return [contextlib.nullcontext()] * 3
    return [emulated_cuda.schedule(order, order, seed) for seed, order
            in enumerate(emulated_cuda.ORDERS)]


def fused_conv_launches(device, fn, kernel=backends.FUSED_KERNEL):
    """``(fn(), n)``: fn's result and how many fused-conv kernels (or others: ``kernel``, a part
    of their name) it launched, counted by the CUDA profiler on a GPU and from the emulation's
    record of its launches on the emulated device."""
    if device == EMULATED_CUDA:
        result, names = emulated_cuda.launches(fn)
        return result, sum(kernel in name for name in names)
    return backends.fused_launches(fn, kernel)

dtypes = [torch.float32, torch.float64]
# Tolerances of the SVD contract (the op docstrings, docs/svd_paths.md), relative to s_1 / ||W||.
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


def trained_spectrum(k, share=0.2, energy=0.9):
    """k singular values decaying geometrically so that the rank rule at ``energy`` keeps about
    ``share`` of them: the shape of a trained layer's spectrum, where a random matrix's is
    nearly flat (and its rank at energy 0.9 near 0.75 k, above what the CPU warm start takes)."""
    i = torch.arange(k, dtype=torch.float64)
    return (1.0 - energy) ** (i / (2 * max(1.0, share * k)))


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


def rank_is_a_tie(S, rank, rule, dtype):
    """Whether the float64 reference sits on a genuine tie of the rule at its cut, so that a
    rounding-level difference may move the rank (the contract allows it there)."""
    delta = 1e-5 if dtype == torch.float32 else 1e-11
    S = S.double()
    s1 = S[0].clamp_min(1e-300)
    if "energy" in rule:
        running = torch.cumsum(S * S, 0)
        target = rule["energy"] * running[-1]
        if torch.any((running - target).abs() <= delta * running[-1]):
            return True
    if "threshold" in rule and torch.any((S - rule["threshold"]).abs() <= delta * s1):
        return True
    return False


def float64_svd(W):
    """The full float64 LAPACK SVD of W on the CPU, (U, S, V): the reference of every rule. A
    test that checks several rules on one W computes it once and passes it to
    assert_svd_contract (on the larger layer shapes it is most of a test's time)."""
    U, S, Vh = torch.linalg.svd(W.double().cpu(), full_matrices=False)
    return U, S, Vh.mT


def assert_svd_contract(W, out, rule, *, exact_rank=False, reference=None):
    """The accuracy contract of the SVD ops (truncated_svd's output ``out`` for the matrices
    ``W``, any device), matrix by matrix, against float64 LAPACK (``reference``: float64_svd(W),
    computed here when not given): shapes and dtypes, finite factors, the rank (equal to the
    reference's, or off only on a genuine tie of the rule unless ``exact_rank``), exact zeros
    past it, kept singular values within tol * s_1, the optimal rank-r error (and the
    reference's rank-r matrix where the cut is not inside a cluster), and orthonormal kept
    vectors with s >= 1e-2 s_1, at the tolerances of svd_tol."""
    tol = svd_tol[W.dtype]
    m, n = W.shape[-2:]
    k = min(m, n)
    U_ref, S_ref, V_ref = reference or float64_svd(W)
    U_ref, S_ref, V_ref = U_ref.reshape(-1, m, k), S_ref.reshape(-1, k), V_ref.reshape(-1, n, k)
    rank_ref = reference_rank(S_ref, **rule)
    U, S, V, rank = (t.cpu() for t in out)
    assert U.shape == (*W.shape[:-2], m, k) and S.shape == (*W.shape[:-2], k)
    assert V.shape == (*W.shape[:-2], n, k) and rank.shape == W.shape[:-2]
    assert rank.dtype == torch.int64
    assert torch.isfinite(U).all() and torch.isfinite(S).all() and torch.isfinite(V).all()
    Wd = W.double().cpu().reshape(-1, m, n)
    for b in range(Wd.shape[0]):
        u, s, v, r = U.reshape(-1, m, k)[b], S.reshape(-1, k)[b], V.reshape(-1, n, k)[b], int(rank.reshape(-1)[b])
        sref, rref = S_ref[b], int(rank_ref[b])
        s1 = float(sref[0])
        if s1 == 0:
            assert r == 0 and not u.any() and not s.any() and not v.any()
            continue
        if exact_rank:
            assert r == rref, (r, rref, rule)
        elif r != rref:
            assert rank_is_a_tie(sref, rref, rule, W.dtype), (r, rref, rule)
        # exact zeros past the rank
        assert not s[r:].any() and not u[:, r:].any() and not v[:, r:].any()
        # kept singular values, descending, within tol * s_1
        assert torch.all(s[:r][:-1] >= s[:r][1:])
        assert (s[:r].double() - sref[:r]).abs().max() <= tol["sigma"] * s1 if r else True
        # the rank-r approximation is optimal: its error is the norm of the dropped values
        low = (u.double() * s.double()) @ v.double().T
        err = torch.linalg.norm(Wd[b] - low)
        best = torch.linalg.norm(sref[r:])
        assert abs(float(err - best)) <= tol["recon"] * float(torch.linalg.norm(Wd[b]))
        # ... and equals the reference's when the cut is not inside a cluster
        if r == rref and (r == k or sref[r - 1] - sref[r] > 1e-3 * s1):
            ref_low = (U_ref[b, :, :r] * sref[:r]) @ V_ref[b, :, :r].T
            assert torch.linalg.norm(low - ref_low) <= tol["recon"] * float(torch.linalg.norm(Wd[b]))
        # kept singular vectors with s >= 1e-2 s_1 are orthonormal
        big = int((s[:r] >= 1e-2 * s1).sum())
        for Q in (u[:, :big].double(), v[:, :big].double()) if big else ():
            assert (Q.T @ Q - torch.eye(big, dtype=torch.float64)).abs().max() <= tol["ortho"]


def diag_matrix(values, m=6, n=8, dtype=torch.float64):
    """An m x n matrix with ``values`` on its diagonal: singular values known exactly."""
    W = torch.zeros(m, n, dtype=dtype)
    for i, v in enumerate(values):
        W[i, i] = v
    return W


def one_step_later(low, change=2e-3, seed=0):
    """Matrices [..., m, n] as TRP meets them one training step after projecting them to
    ``low``: low plus a random change of ``change`` times its size, per matrix (an SGD step of
    ResNet-20 under TRP+Nu, lr 0.1, moves a layer by about 2e-3 of its norm)."""
    g = torch.Generator().manual_seed(seed)
    low = low.detach().cpu()
    noise = torch.randn(low.shape, dtype=torch.float64, generator=g)
    size = torch.linalg.matrix_norm(low.double(), keepdim=True)
    noise *= change * size / torch.linalg.matrix_norm(noise, keepdim=True)
    return (low.double() + noise).to(low.dtype)
