"""trp::truncated_svd and trp::lowrank_project on every device and both paths, against float64
LAPACK references: the contract on adversarial matrices and the rank rule (test_svd_cuda.py has
the CUDA-only checks). CUDA cases are marked ``cuda`` and show as skipped without a GPU; they also
run on the emulated CUDA device (tests/emulated_cuda.py), on the Jacobi path only: the composite
path has no CUDA source to emulate."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from testing import (EMULATED_CUDA, adversarial, assert_svd_contract, cpu_and_cuda, diag_matrix,
                     dtypes, each_schedule, float64_svd, svd_tol, with_spectrum)
from trp_kernels.ops import backends
from trp_kernels.ops.svd import (lowrank_project_groups, project_matrices,
                                 reference_lowrank_project, reference_rank)

SHAPES = [(24, 24), (40, 12), (12, 40), (2, 3, 10, 30), (64, 200), (90, 33)]
RULES = [
    {},
    {"energy": 0.9},
    {"energy": 1.0},
    {"threshold": 0.5},
    {"max_rank": 5},
    {"energy": 0.99, "max_rank": 7},
    {"threshold": 0.0},
    {"max_rank": 1000},
]

# Every contract test runs on both implementations (trp_kernels/ops/backends.py): the compiled
# op ("jacobi": LAPACK kernels on the CPU, Jacobi kernels on CUDA) and the composite path of
# torch calls ("eigh": float64 Gram + torch.linalg.eigh), which is the CUDA default until the
# kernels are validated on a GPU.
SVD_IMPLS = ("jacobi", "eigh")


@pytest.fixture(params=SVD_IMPLS)
def impl(request):
    if request.param == "eigh" and request.getfixturevalue("device") == EMULATED_CUDA:
        pytest.skip("the composite path runs torch ops, not CUDA sources: nothing to emulate")
    with backends.forced(svd=request.param):
        yield request.param


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_truncated_svd_contract(impl, device, dtype, shape):
    for name, W in adversarial(shape, dtype):
        reference = float64_svd(W)
        for rule in RULES:
            out = tk.truncated_svd(W.to(device), **rule)
            try:
                assert_svd_contract(W, out, rule, reference=reference)
            except AssertionError as e:
                raise AssertionError(f"case {name}, rule {rule}: {e}") from e


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lowrank_project_matches_reference(impl, device, dtype, shape):
    tol = svd_tol[dtype]
    for name, W in adversarial(shape, dtype):
        for rule in ({"energy": 0.9}, {"threshold": 0.5}, {"max_rank": 3}, {}):
            low, sub, rank = tk.lowrank_project(W.to(device), **rule)
            U, S, V, rank_svd = tk.truncated_svd(W.to(device), **rule)
            assert low.shape == W.shape and sub.shape == W.shape and low.dtype == dtype
            assert torch.equal(rank.cpu(), rank_svd.cpu())
            # the projection is U_r S_r V_r^T and the sub-gradient U_r V_r^T of the same SVD
            scale = float(torch.linalg.norm(W.double())) or 1.0
            assert torch.linalg.norm((low.double() - (U * S.unsqueeze(-2)).double() @ V.double().mT).cpu()) <= tol["recon"] * scale, name
            assert torch.linalg.norm((sub.double() - U.double() @ V.double().mT).cpu()) <= tol["recon"] * max(1.0, float(rank.max())), name
            # and agrees with the float64 reference wherever the cut is unambiguous
            ref = reference_lowrank_project(W.double(), **rule)
            if torch.equal(rank.cpu(), ref.rank):
                sv = torch.linalg.svdvals(W.double().reshape(-1, *W.shape[-2:]))
                r = ref.rank.reshape(-1)
                gap_ok = all(
                    int(rb) == 0 or int(rb) == sv.shape[-1] or float(sv[b, int(rb) - 1] - sv[b, int(rb)]) > 1e-3 * float(sv[b, 0])
                    for b, rb in enumerate(r)
                )
                small_kept = any(int(rb) > 0 and float(sv[b, int(rb) - 1]) < 1e-2 * float(sv[b, 0]) for b, rb in enumerate(r))
                if gap_ok:
                    assert torch.linalg.norm((low.double().cpu() - ref.W_low)) <= tol["recon"] * scale, name
                    if not small_kept:  # U_r V_r^T is ill-posed when tiny singular values are kept
                        assert torch.linalg.norm(sub.double().cpu() - ref.subgrad) <= tol["ortho"] * max(1.0, float(r.max())) ** 0.5, name



@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize(
    "rule,expected",
    [
        ({}, 6),                                  # no criterion: k = min(m, n), zeros included
        ({"energy": 0.5}, 1),                     # 16 >= 0.5 * 30
        ({"energy": 0.8}, 2),                     # 25 >= 24
        ({"energy": 0.9}, 3),                     # 29 >= 27
        ({"energy": 1.0}, 4),                     # only the nonzero values
        ({"threshold": 2.0}, 2),                  # s > 2, strictly
        ({"threshold": 0.0}, 4),
        ({"max_rank": 3}, 3),
        ({"max_rank": 0}, 0),
        ({"energy": 0.8, "threshold": 3.5}, 1),   # criteria combine by the smallest rank
        ({"energy": 1.0, "max_rank": 3}, 3),
    ],
)
def test_rank_rule(impl, device, dtype, rule, expected):
    W = diag_matrix([4.0, 3.0, 2.0, 1.0], dtype=dtype).to(device)
    U, S, V, rank = tk.truncated_svd(W, **rule)
    assert int(rank) == expected
    assert int(reference_rank(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0]), **rule)) == expected
    kept = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0], dtype=dtype)[:expected]
    torch.testing.assert_close(S[:expected].cpu(), kept)
    assert not S[expected:].any()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
def test_zero_matrix_has_rank_zero(impl, device, dtype):
    W = torch.zeros(3, 7, 5, dtype=dtype, device=device)
    for rule in ({}, {"energy": 0.9}, {"threshold": 0.0}):
        U, S, V, rank = tk.truncated_svd(W, **rule)
        assert rank.tolist() == [0, 0, 0]
        assert not U.any() and not S.any() and not V.any()
        low, sub, rank = tk.lowrank_project(W, **rule)
        assert rank.tolist() == [0, 0, 0] and not low.any() and not sub.any()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
def test_rank_one_and_repeated_values_give_no_nan(impl, device, dtype):
    u, v = torch.randn(9, 1, dtype=dtype), torch.randn(1, 4, dtype=dtype)
    for W in (u @ v, torch.eye(6, dtype=dtype), 3 * torch.eye(5, 8, dtype=dtype)):
        reference = float64_svd(W)
        for rule in ({}, {"energy": 0.9}, {"energy": 1.0}):
            out = tk.truncated_svd(W.to(device), **rule)
            assert all(torch.isfinite(t).all() for t in out[:3])
            assert_svd_contract(W, out, rule, reference=reference)
            low, sub, _ = tk.lowrank_project(W.to(device), **rule)
            assert torch.isfinite(low).all() and torch.isfinite(sub).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_rank_deficient_without_criteria_completes_orthonormal_factors(impl, device):
    # rank 3 in a 6 x 10 matrix: all 6 columns are kept and must still be orthonormal
    W = with_spectrum((6, 10), [3.0, 2.0, 1.0]).float().to(device)
    U, S, V, rank = tk.truncated_svd(W)
    assert int(rank) == 6
    assert not S[3:].any()
    for Q in (U.double().cpu(), V.double().cpu()):
        assert (Q.T @ Q - torch.eye(6, dtype=torch.float64)).abs().max() < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_noise_is_flushed_before_the_rank_rule_in_every_order(impl, device):
    # Rank 3: the other singular values are rounding noise, flushed to zero before the rank rule
    # counts, so that a tiny threshold still counts three -- whichever thread runs first.
    # (float32: the fused kernel flushes noise for float32 input, which it does not refine)
    W = (torch.randn(2, 24, 3, dtype=torch.float64) @ torch.randn(2, 3, 40, dtype=torch.float64))
    W = W.float()
    threshold = 1e-9 * torch.linalg.svdvals(W.double())[..., 0].min().item()
    for schedule in each_schedule(device):
        with schedule:
            rank = tk.truncated_svd(W.to(device), threshold=threshold).rank
        assert rank.tolist() == [3, 3]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
def test_batch_shapes(impl, device, dtype):
    W = torch.randn(2, 3, 4, 9, 5, dtype=dtype, device=device)
    U, S, V, rank = tk.truncated_svd(W, energy=0.9)
    assert U.shape == (2, 3, 4, 9, 5) and S.shape == (2, 3, 4, 5) and V.shape == (2, 3, 4, 5, 5)
    assert rank.shape == (2, 3, 4)
    flat = tk.truncated_svd(W.reshape(-1, 9, 5), energy=0.9)
    assert torch.equal(rank.reshape(-1), flat.rank)
    torch.testing.assert_close(S.reshape(-1, 5), flat.S)
    # empty batches and empty matrices
    for shape, k in (((0, 4, 3), 3), ((2, 0, 3), 0), ((2, 3, 0), 0)):
        U, S, V, rank = tk.truncated_svd(torch.randn(shape, dtype=dtype, device=device))
        assert U.shape == (*shape[:-1], k) and S.shape == (shape[0], k)
        low, sub, r = tk.lowrank_project(torch.randn(shape, dtype=dtype, device=device))
        assert low.shape == shape and r.shape == (shape[0],)
    # non-contiguous input
    Wt = torch.randn(3, 12, 7, dtype=dtype, device=device).mT
    torch.testing.assert_close(tk.truncated_svd(Wt).S, tk.truncated_svd(Wt.contiguous()).S)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
def test_project_groups_and_mixed_lists(impl, device, dtype):
    shapes = [(16, 36), (8, 8), (16, 36), (30, 6), (8, 8), (16, 36)]
    matrices = [torch.randn(s, dtype=dtype, device=device) for s in shapes]
    results = project_matrices(matrices, energy=0.8)
    for M, res in zip(matrices, results):
        low, sub, rank = tk.lowrank_project(M, energy=0.8)
        torch.testing.assert_close(res.W_low, low)
        torch.testing.assert_close(res.subgrad, sub)
        assert int(res.rank) == int(rank)
    groups = [torch.stack([matrices[0], matrices[2], matrices[5]]),
              torch.randn(5, 8, 8, dtype=dtype, device=device)]
    lows, subs, ranks = lowrank_project_groups(groups, max_rank=4)
    for g, low, rank in zip(groups, lows, ranks):
        torch.testing.assert_close(low, tk.lowrank_project(g, max_rank=4).W_low)
        assert (rank == 4).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_deterministic(impl, device):
    W = torch.randn(4, 32, 96, device=device)
    first = tk.lowrank_project(W, energy=0.9)
    for schedule in each_schedule(device):
        with schedule:
            again = tk.lowrank_project(W, energy=0.9)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_huge_and_tiny_scales(impl, device):
    W = torch.randn(20, 50, dtype=torch.float64)
    for scale in (1e-30, 1e30):
        for dtype in dtypes:
            S = tk.truncated_svd((scale * W).to(dtype).to(device)).S.double().cpu()
            ref = torch.linalg.svdvals(scale * W.to(dtype).double())
            assert ((S - ref).abs() <= svd_tol[dtype]["sigma"] * ref[0]).all()
