"""Warm starts of trp::lowrank_project and lowrank_project_groups (docs/svd_paths.md, "Warm
start"): the basis a projection returns, passed back for the next projection of the same matrices
after a small change, on the CPU kernel and the CUDA kernels (emulated device too), held to the
cold op and to float64 references -- the same ranks, the projection and sub-gradient to the float
tolerance -- and starts that cannot help (NaN, not orthonormal, an unrelated basis, repeated
singular values), which must never change the answer."""

from __future__ import annotations

import contextlib

import pytest
import torch

from testing import (EMULATED_CUDA, cpu_and_cuda, dtypes, one_step_later, trained_spectrum,
                     with_spectrum)
from trp_kernels.ops import backends
from trp_kernels.ops.svd import (lowrank_project, lowrank_project_groups,
                                 reference_lowrank_project)

ENERGY = 0.9
# k = min(m, n): the fused CUDA kernel up to 64, the blocked Jacobi above; wide, tall, square.
SHAPES = [(6, 16, 144), (2, 64, 200), (3, 48, 48), (2, 96, 96), (2, 130, 70)]
# Relative to each matrix's norm: the projection and sub-gradient against the cold op and the
# float64 reference (float32: the 1e-5; float64: the contract's own).
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def compiled_op():
    """The compiled op on every device (the CUDA default runs the composite path above k = 64,
    which has no warm start)."""
    with backends.forced(svd="jacobi"):
        yield


@contextlib.contextmanager
def cpu_warm_counts(device, expect):
    """Checks that the CPU kernel's warm solves ended as ``expect`` says (a dict of outcome name
    to count) during the block; elsewhere does nothing."""
    names = ("accepted", "bad_start", "no_gap", "not_certified")
    torch.ops.trp.warm_start_counts(True)
    yield
    if device == "cpu":
        counts = dict(zip(names, torch.ops.trp.warm_start_counts(True)))
        for name, count in expect.items():
            assert counts[name] == count, counts


def relative(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    scale = torch.linalg.matrix_norm(b).clamp_min(1e-300)
    return float((torch.linalg.matrix_norm(a - b) / scale).max())


def previous_and_next(shape, dtype, device, seed=0):
    """(start basis, W): the basis of the projection of a random batch, and that projection one
    training step later -- what a TRP step hands the op."""
    g = torch.Generator().manual_seed(seed)
    W0 = with_spectrum(shape, trained_spectrum(min(shape[-2:])), g).to(dtype)
    first = lowrank_project(W0.to(device), energy=ENERGY, return_basis=True)
    return first.basis, one_step_later(first.W_low, seed=seed).to(device)


def assert_same_as_cold(W, warm, cold, dtype, energy=ENERGY):
    assert torch.equal(warm.rank.cpu(), cold.rank.cpu())
    assert relative(warm.W_low, cold.W_low) <= TOL[dtype]
    assert relative(warm.subgrad, cold.subgrad) <= TOL[dtype]
    ref = reference_lowrank_project(W.cpu().double(), energy=energy)
    assert torch.equal(warm.rank.cpu(), ref.rank)
    assert relative(warm.W_low, ref.W_low) <= TOL[dtype]
    assert relative(warm.subgrad, ref.subgrad) <= TOL[dtype]


def assert_basis(basis, W, rank, dtype):
    """Orthonormal columns whose leading `rank` span the kept left (wide) or right (tall)
    singular vectors of W."""
    basis = basis.cpu()
    m, n = W.shape[-2:]
    k = min(m, n)
    assert basis.shape == (*W.shape[:-2], k, k) and basis.dtype == torch.float64
    eye = torch.eye(k, dtype=torch.float64)
    ortho = 1e-6 if dtype == torch.float32 else 1e-10
    assert (basis.mT @ basis - eye).abs().max() <= ortho
    U, _, Vh = torch.linalg.svd(W.cpu().double(), full_matrices=False)
    short = (U if m <= n else Vh.mT).reshape(-1, k, k)
    for b, s, r in zip(basis.reshape(-1, k, k), short, rank.cpu().reshape(-1).tolist()):
        kept = b[:, :r] @ b[:, :r].T - s[:, :r] @ s[:, :r].T
        assert kept.abs().max() <= 100 * ortho


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_warm_start_gives_the_cold_result(device, dtype, shape):
    start, W = previous_and_next(shape, dtype, device)
    cold = lowrank_project(W, energy=ENERGY, return_basis=True)
    # The CPU kernel warm-starts float32 matrices only (float64 keeps LAPACK's SVD).
    matrices = W.shape[:-2].numel()
    expect = {"accepted": matrices if dtype == torch.float32 else 0, "bad_start": 0}
    with cpu_warm_counts(device, expect):
        warm = lowrank_project(W, energy=ENERGY, basis=start, return_basis=True)
    assert_same_as_cold(W, warm, cold, dtype)
    assert_basis(warm.basis, W, warm.rank, dtype)
    # ... and a chain of steps, each starting from the last one's basis, stays on the cold path
    for step in range(1, 4):
        W = one_step_later(warm.W_low, seed=step).to(device)
        warm = lowrank_project(W, energy=ENERGY, basis=warm.basis, return_basis=True)
        assert_same_as_cold(W, warm, lowrank_project(W, energy=ENERGY, return_basis=True), dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_the_start_is_used(device):
    """From a start that already diagonalises the Gram matrix, with its vectors' signs flipped,
    a warm solve keeps them as they are (nothing to rotate) where a cold one would not know
    them: the returned basis carries the flipped signs."""
    if device == "cpu":   # the CPU solver needs the step structure of TRP (docs)
        start, W = previous_and_next((3, 32, 288), torch.float32, device)
        cold = lowrank_project(W, energy=ENERGY, return_basis=True)
    else:
        W = torch.randn(3, 32, 288, device=device)
        cold = lowrank_project(W, energy=ENERGY, return_basis=True)
    flipped = -cold.basis
    with cpu_warm_counts(device, {"accepted": 3}):
        warm = lowrank_project(W, energy=ENERGY, basis=flipped, return_basis=True)
    rank = int(cold.rank.min())
    agree = (warm.basis[..., :rank] * flipped[..., :rank]).sum(-2).cpu()   # column dots
    assert (agree - 1).abs().max() <= 1e-5, agree
    assert torch.equal(warm.rank.cpu(), cold.rank.cpu())
    assert relative(warm.W_low, cold.W_low) <= 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(3, 32, 288), (2, 96, 96)], ids=str)
def test_a_start_orthonormal_to_float32_only_is_made_orthonormal(device, shape):
    """A start rounded through float32 (orthonormal to about 1e-7, within the accepted 1e-6)
    still gives float64 results to 1e-10: the solvers make it orthonormal to rounding first
    (on CUDA one Newton-Schulz step; used as it is, it would shift the eigenvalues by 1e-7)."""
    start, W = previous_and_next(shape, torch.float64, device)
    rounded = start.float().double()
    eye = torch.eye(start.shape[-1], dtype=torch.float64, device=start.device)
    assert 1e-9 < float((rounded.mT @ rounded - eye).abs().max()) < 1e-6
    warm = lowrank_project(W, energy=ENERGY, basis=rounded, return_basis=True)
    assert_same_as_cold(W, warm, lowrank_project(W, energy=ENERGY, return_basis=True),
                        torch.float64)
    assert_basis(warm.basis, W, warm.rank, torch.float64)


def orthonormal(k, seed, batch=()):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(*batch, k, k, dtype=torch.float64, generator=g)).Q


def one_nan_each(start):
    """``start`` with the last entry of every matrix NaN."""
    last = torch.zeros(start.shape[-2:], dtype=torch.bool)
    last[-1, -1] = True
    return torch.where(last.to(start.device), float("nan"), start)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(3, 32, 288), (2, 96, 96)], ids=str)
def test_a_start_that_is_not_a_basis_falls_back_to_cold(device, shape):
    """NaN, scaled, or perturbed beyond rounding: detected, and the result is the cold one bit
    for bit."""
    start, W = previous_and_next(shape, torch.float32, device)
    cold = lowrank_project(W, energy=ENERGY, return_basis=True)
    g = torch.Generator().manual_seed(5)
    bad_starts = {
        "nan": torch.full_like(start, float("nan")),
        "one nan each": one_nan_each(start),
        "scaled": 2 * start,
        "not orthogonal": start + 1e-3 * torch.randn(start.shape, dtype=torch.float64,
                                                     generator=g).to(start.device),
        "inf": torch.full_like(start, float("inf")),
    }
    matrices = W.shape[:-2].numel()
    for name, bad in bad_starts.items():
        with cpu_warm_counts(device, {"bad_start": matrices, "accepted": 0}):
            out = lowrank_project(W, energy=ENERGY, basis=bad, return_basis=True)
        for a, b in zip(out, cold):
            assert torch.equal(a.cpu(), b.cpu()), name


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("shape", [(3, 32, 288), (2, 96, 96)], ids=str)
def test_starts_that_do_not_fit_give_the_cold_result(device, dtype, shape):
    """An orthonormal basis of an unrelated matrix, and matrices with repeated singular values
    started from a basis mixed inside each cluster: the rank and projection of a cold start,
    whether the solver uses the start or drops it."""
    k = min(shape[-2:])
    start, W = previous_and_next(shape, dtype, device)
    unrelated = orthonormal(k, 7, shape[:-2]).to(device)
    warm = lowrank_project(W, energy=ENERGY, basis=unrelated, return_basis=True)
    assert_same_as_cold(W, warm, lowrank_project(W, energy=ENERGY, return_basis=True), dtype)
    # Repeated values [3] * a, [2] * a (both kept at energy 0.999), a tail of 1e-3: projected
    # once, then started again from the basis with each cluster rotated within itself.
    a, energy = k // 4, 0.999
    g = torch.Generator().manual_seed(11)
    values = [3.0] * a + [2.0] * a + [1e-3] * (k - 2 * a)
    W = with_spectrum(shape, values, g).to(dtype)
    first = lowrank_project(W.to(device), energy=energy, return_basis=True)
    mix = torch.eye(k, dtype=torch.float64).repeat(*shape[:-2], 1, 1)
    mix[..., :a, :a] = orthonormal(a, 12, shape[:-2])
    mix[..., a:2 * a, a:2 * a] = orthonormal(a, 13, shape[:-2])
    rotated = first.basis @ mix.to(device)
    W = one_step_later(first.W_low, change=1e-4, seed=3).to(device)
    assert (first.rank == 2 * a).all()
    warm = lowrank_project(W, energy=energy, basis=rotated, return_basis=True)
    cold = lowrank_project(W, energy=energy, return_basis=True)
    assert_same_as_cold(W, warm, cold, dtype, energy)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_repeated_values_at_the_cut(device):
    """The cut inside a cluster of equal singular values: any basis of the cluster is right, so
    warm and cold may keep different vectors; both keep the rank and a best approximation."""
    k, a = 32, 8
    shape = (2, k, 3 * k)
    values = [2.0] * (2 * a) + [1.0] * (k - 2 * a)     # energy 0.5 cuts inside the 2s
    g = torch.Generator().manual_seed(2)
    W = with_spectrum(shape, values, g).float()
    first = lowrank_project(W.to(device), energy=0.5, return_basis=True)
    W = one_step_later(first.W_low, change=1e-4, seed=4).to(device)
    cold = lowrank_project(W, energy=0.5)
    warm = lowrank_project(W, energy=0.5, basis=first.basis)
    assert torch.equal(warm.rank.cpu(), cold.rank.cpu())
    S = torch.linalg.svdvals(W.cpu().double())
    for b, r in enumerate(warm.rank.cpu().tolist()):
        err = torch.linalg.matrix_norm(W[b].cpu().double() - warm.W_low[b].cpu().double())
        assert abs(float(err - torch.linalg.vector_norm(S[b, r:]))) <= 1e-5 * float(S[b, 0])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_groups_take_one_start_per_group(device):
    """lowrank_project_groups with a start (or None) per group gives each group what
    lowrank_project gives it, and returns the bases with return_basis=True."""
    shapes = [(4, 16, 144), (3, 32, 288), (2, 96, 96)]
    pairs = [previous_and_next(s, torch.float32, device, seed=i) for i, s in enumerate(shapes)]
    starts = [pairs[0][0], None, pairs[2][0]]
    groups = [W for _, W in pairs]
    lows, subs, ranks, bases = lowrank_project_groups(groups, energy=ENERGY, basis=starts,
                                                      return_basis=True)
    for W, start, low, sub, rank, basis in zip(groups, starts, lows, subs, ranks, bases):
        one = lowrank_project(W, energy=ENERGY, basis=start, return_basis=True)
        assert torch.equal(rank.cpu(), one.rank.cpu())
        assert relative(low, one.W_low) <= 1e-5 and relative(sub, one.subgrad) <= 1e-5
        assert_basis(basis, W, rank, torch.float32)
    assert len(lowrank_project_groups(groups, energy=ENERGY, basis=starts)) == 3


@pytest.mark.parametrize("impl", ["jacobi", "eigh"])
def test_bad_basis_arguments(impl):
    W = torch.randn(2, 8, 12)
    good = torch.eye(8, dtype=torch.float64).repeat(2, 1, 1)
    with backends.forced(svd=impl):
        with pytest.raises(TypeError, match="basis"):
            lowrank_project(W, energy=0.9, basis=good.float())
        with pytest.raises(TypeError, match="basis"):
            lowrank_project(W, energy=0.9, basis=good.tolist())
        with pytest.raises(ValueError, match="basis"):
            lowrank_project(W, energy=0.9, basis=good[0])
        with pytest.raises(ValueError, match="basis"):
            lowrank_project(W, energy=0.9, basis=torch.eye(12, dtype=torch.float64).repeat(2, 1, 1))
        with pytest.raises(TypeError, match="return_basis"):
            lowrank_project(W, energy=0.9, return_basis="yes")
        with pytest.raises(ValueError, match="basis"):
            lowrank_project_groups([W, W], energy=0.9, basis=[good])
        with pytest.raises(ValueError, match=r"basis\[1\]"):
            lowrank_project_groups([W, W], energy=0.9, basis=[good, good[:1]])
        # the ops themselves check too (any caller of torch.ops.trp)
        if impl == "jacobi":
            with pytest.raises(ValueError, match="basis"):
                torch.ops.trp.lowrank_project(W, 0.9, None, None, good[0])
            with pytest.raises(TypeError, match="basis"):
                torch.ops.trp.lowrank_project(W, 0.9, None, None, good.float())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_a_start_on_another_device_is_refused(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    W = torch.randn(2, 8, 12, device=device)
    with pytest.raises(ValueError, match="basis"):
        lowrank_project(W, energy=0.9, basis=torch.eye(8, dtype=torch.float64).repeat(2, 1, 1))


def test_composite_path_returns_the_basis_and_checks_the_start():
    """The composite path (TRP_SVD_IMPL=eigh) has no use for a start (eigh takes none) but checks
    it and returns the basis of the same contract, so that callers need not know the path."""
    start, W = previous_and_next((3, 32, 288), torch.float32, "cpu")
    with backends.forced(svd="eigh"):
        out = lowrank_project(W, energy=ENERGY, basis=start, return_basis=True)
        cold = lowrank_project(W, energy=ENERGY, return_basis=True)
    for a, b in zip(out, cold):
        assert torch.equal(a, b)
    assert_basis(out.basis, W, out.rank, torch.float32)


def test_cpu_turns_down_blocks_too_large_to_pay():
    """Above k = 64 the CPU warm solver iterates on at most 0.35 k start columns: a random
    matrix's rank at energy 0.9 (about 0.75 k) is past that, so the start is turned down (one
    probe, counted as no gap) and the cold result comes back; a trained layer's decaying
    spectrum of the same shape is solved warm."""
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(2, 192, 192, dtype=torch.float64, generator=g).float()
    first = lowrank_project(flat, energy=ENERGY, return_basis=True)
    W = one_step_later(first.W_low, seed=1)
    assert int(first.rank.min()) > 0.35 * 192
    with cpu_warm_counts("cpu", {"no_gap": 2, "accepted": 0}):
        warm = lowrank_project(W, energy=ENERGY, basis=first.basis, return_basis=True)
    assert_same_as_cold(W, warm, lowrank_project(W, energy=ENERGY, return_basis=True),
                        torch.float32)
    start, W = previous_and_next((2, 192, 192), torch.float32, "cpu")
    with cpu_warm_counts("cpu", {"accepted": 2}):
        lowrank_project(W, energy=ENERGY, basis=start)
