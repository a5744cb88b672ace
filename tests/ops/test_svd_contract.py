"""trp::truncated_svd and trp::lowrank_project on every device, against float64 LAPACK
references: the contract on adversarial matrices and the rank rule (all devices), and the
CUDA-only checks (docs/cuda_svd.md): agreement with the CPU op on every algorithm path of
csrc/cuda/svd_launch.cpp, determinism, CUDA-graph capture, streams of the groups op, the
non-finite contract, empty batches and the ResNet-18/50 layer shapes. CUDA cases are marked
``cuda`` and show as skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from trp_kernels.ops import backends
from trp_kernels.ops.svd import (
    lowrank_project_groups,
    project_matrices,
    reference_lowrank_project,
    reference_rank,
)

from testing import (adversarial, assert_svd_contract, cpu_and_cuda, cuda_only, diag_matrix, dtypes,
                     svd_tol, with_spectrum)

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

# Every contract test runs on both implementations (trp_kernels/svd_select.py): the compiled
# op ("jacobi": LAPACK kernels on the CPU, Jacobi kernels on CUDA) and the composite path of
# torch calls ("eigh": float64 Gram + torch.linalg.eigh), which is the CUDA default until the
# kernels are validated on a GPU.
SVD_IMPLS = ("jacobi", "eigh")


@pytest.fixture(params=SVD_IMPLS)
def impl(request):
    with backends.forced(svd=request.param):
        yield request.param


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_truncated_svd_contract(impl, device, dtype, shape):
    for name, W in adversarial(shape, dtype):
        for rule in RULES:
            out = tk.truncated_svd(W.to(device), **rule)
            try:
                assert_svd_contract(W, out, rule)
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
        for rule in ({}, {"energy": 0.9}, {"energy": 1.0}):
            out = tk.truncated_svd(W.to(device), **rule)
            assert all(torch.isfinite(t).all() for t in out[:3])
            assert_svd_contract(W, out, rule)
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
    for _ in range(3):
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


# -- CUDA only --------------------------------------------------------------------------------

# Shapes that select each path of csrc/cuda/svd_launch.cpp: the fused kernel (k <= 64: wide,
# tall, odd k) and the blocked Jacobi with 32-wide pair tiles (64 < k <= 512, padded or not)
# and 64-wide ones (k > 512).
FUSED = [(16, 144), (64, 576), (48, 48), (33, 17)]
BLOCKED_32 = [(96, 96), (70, 100), (130, 90), (128, 1152)]
BLOCKED_64 = [(520, 600)]
PATHS = FUSED + BLOCKED_32 + BLOCKED_64

@pytest.fixture
def jacobi_kernels():
    """The CUDA-only checks below are about the Jacobi kernels, whatever the default path."""
    with backends.forced(svd="jacobi"):
        yield


# The distinct layer matrices of ResNet-18 and ResNet-50 (bench/layer_sets.json), both schemes.
RESNET_18_50 = [
    (64, 576), (128, 576), (128, 1152), (256, 1152), (256, 2304), (512, 2304), (512, 4608),
    (192, 192), (192, 384), (384, 384), (384, 768), (768, 768), (768, 1536), (1536, 1536),
]


def reference(W, **rule):
    """Float64 LAPACK SVD on the CPU and the rule applied to it."""
    Wd = W.detach().double().cpu()
    U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
    return U, S, Vh.mT, reference_rank(S, **rule)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", PATHS, ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_every_path_matches_the_cpu_op(jacobi_kernels, device, shape, dtype):
    W = torch.randn(2, *shape, dtype=dtype)
    tol = svd_tol[dtype]
    for rule in ({}, {"energy": 0.9}, {"threshold": 1.0, "max_rank": 40}):
        gpu = tk.truncated_svd(W.to(device), **rule)
        cpu = tk.truncated_svd(W, **rule)
        assert torch.equal(gpu.rank.cpu(), cpu.rank)
        s1 = float(cpu.S[..., 0].max())
        assert float((gpu.S.cpu() - cpu.S).abs().max()) <= tol["sigma"] * s1
        assert_svd_contract(W, gpu, rule, exact_rank=True)
        low, sub, rank = tk.lowrank_project(W.to(device), **rule)
        low_cpu, sub_cpu, rank_cpu = tk.lowrank_project(W, **rule)
        assert torch.equal(rank.cpu(), rank_cpu)
        scale = float(torch.linalg.norm(W.double()))
        low_err = float(torch.linalg.norm(low.cpu().double() - low_cpu.double()))
        assert low_err <= tol["recon"] * scale
        sub_err = float(torch.linalg.norm(sub.cpu().double() - sub_cpu.double()))
        assert sub_err <= tol["ortho"] * max(1.0, float(rank_cpu.max())) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 10), (80, 100), (100, 530)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_kept_zero_singular_values_are_completed(jacobi_kernels, device, shape, dtype):
    # rank 3 and no criterion: every column is kept, the factors must stay orthonormal. float32
    # flushes the Gram noise floor to exact zeros (as the CPU kernel); float64, like LAPACK,
    # leaves rounding-level values.
    W = with_spectrum((2, *shape), [3.0, 2.0, 1.0]).to(dtype)
    U, S, V, rank = tk.truncated_svd(W.to(device))
    k = min(shape)
    assert rank.tolist() == [k, k]
    if dtype == torch.float32:
        assert not S[:, 3:].any()
    else:
        assert float(S[:, 3:].max()) <= 1e-13 * 3.0
    eye = torch.eye(k, dtype=torch.float64)
    for Q in (U.double().cpu(), V.double().cpu()):
        assert float((Q.mT @ Q - eye).abs().max()) < (1e-5 if dtype == torch.float32 else 1e-10)
    low, sub, _ = tk.lowrank_project(W.to(device))
    assert torch.isfinite(sub).all()
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(low.cpu().double(), W.double(), rtol=0, atol=atol)


@pytest.mark.parametrize("shape", [(64, 576), (130, 90)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_repeated_calls_are_bitwise_identical(jacobi_kernels, device, shape):
    W = torch.randn(3, *shape, device=device)
    first = tk.lowrank_project(W, energy=0.9)
    factors = tk.truncated_svd(W, energy=0.9)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, tk.lowrank_project(W, energy=0.9)))
        assert all(torch.equal(a, b) for a, b in zip(factors, tk.truncated_svd(W, energy=0.9)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(32, 288), (96, 96)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_graph_capture_and_replay(jacobi_kernels, device, shape, dtype):
    static = torch.randn(4, *shape, device=device, dtype=dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph expects
        for _ in range(2):
            tk.lowrank_project(static, energy=0.9, check_finite=False)
            tk.truncated_svd(static, energy=0.9, check_finite=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        low, sub, rank = tk.lowrank_project(static, energy=0.9, check_finite=False)
        U, S, V, rank_svd = tk.truncated_svd(static, energy=0.9, check_finite=False)
    for _ in range(2):
        fresh = torch.randn_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        eager = tk.lowrank_project(fresh, energy=0.9)
        assert torch.equal(rank, eager.rank) and torch.equal(rank_svd, eager.rank)
        torch.testing.assert_close(low, eager.W_low)
        torch.testing.assert_close(sub, eager.subgrad)
        torch.testing.assert_close(S, tk.truncated_svd(fresh, energy=0.9).S)


@pytest.mark.parametrize("device", cuda_only())
def test_groups_run_concurrently_and_match_single_calls(jacobi_kernels, device):
    # lowrank_project_groups runs each group on its own stream: the same kernels as
    # lowrank_project, so the same bits, and the current stream sees every result.
    groups = [torch.randn(6, 16, 144, device=device), torch.randn(5, 96, 96, device=device),
              torch.randn(3, 64, 576, device=device, dtype=torch.float64),
              torch.randn(2, 130, 90, device=device)]
    lows, subs, ranks = lowrank_project_groups(groups, energy=0.9)
    for g, low, sub, rank in zip(groups, lows, subs, ranks):
        single = tk.lowrank_project(g, energy=0.9)
        assert torch.equal(low, single.W_low) and torch.equal(sub, single.subgrad)
        assert torch.equal(rank, single.rank)
    static = [g.clone() for g in groups]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        lowrank_project_groups(static, energy=0.9, check_finite=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = lowrank_project_groups(static, energy=0.9, check_finite=False)
    fresh = [torch.randn_like(g) for g in groups]
    for s, f in zip(static, fresh):
        s.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    eager = lowrank_project_groups(fresh, energy=0.9)
    for a, b in zip(captured, eager):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16, 144), (96, 96)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_nonfinite_matrix_gets_rank_minus_one(jacobi_kernels, device, shape, dtype):
    W = torch.randn(3, *shape, device=device, dtype=dtype)
    W[1, 2, 3] = float("nan")
    W[2, 0, 0] = float("inf")
    U, S, V, rank = tk.truncated_svd(W, energy=0.9, check_finite=False)
    assert rank[1] == -1 and rank[2] == -1 and rank[0] > 0
    assert U[1:].isnan().all() and S[1:].isnan().all() and V[1:].isnan().all()
    assert torch.isfinite(U[0]).all() and torch.isfinite(S[0]).all()
    low, sub, rank_p = tk.lowrank_project(W, energy=0.9, check_finite=False)
    assert torch.equal(rank_p, rank)
    assert low[1:].isnan().all() and sub[1:].isnan().all() and torch.isfinite(low[0]).all()
    with pytest.raises(ValueError, match="non-finite"):
        tk.truncated_svd(W)
    with pytest.raises(ValueError, match="non-finite"):
        tk.lowrank_project(W)


@pytest.mark.parametrize("shape", [(0, 16, 144), (0, 96, 200), (2, 0, 5), (2, 5, 0)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_empty_batches_and_matrices(jacobi_kernels, device, shape):
    W = torch.randn(shape, device=device)
    k = min(shape[-2:])
    U, S, V, rank = tk.truncated_svd(W)
    assert U.shape == (*shape[:-1], k) and S.shape == (shape[0], k)
    assert V.shape == (shape[0], shape[2], k)
    assert rank.shape == (shape[0],) and not rank.any()
    low, sub, rank = tk.lowrank_project(W)
    assert low.shape == shape and sub.shape == shape and rank.shape == (shape[0],)


@pytest.mark.parametrize("shape", [(16, 144), (96, 96)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_zero_and_rank_one_matrices_give_no_nan(jacobi_kernels, device, shape):
    u, v = torch.randn(shape[0], 1), torch.randn(1, shape[1])
    W = torch.stack([torch.zeros(shape), u @ v, torch.eye(*shape), 2 * torch.eye(*shape)]).to(device)
    for rule in ({}, {"energy": 0.9}, {"threshold": 0.5}):
        U, S, V, rank = tk.truncated_svd(W, **rule)
        assert all(torch.isfinite(t).all() for t in (U, S, V))
        assert int(rank[0]) == 0 and not U[0].any() and not S[0].any()
        if "energy" in rule or "threshold" in rule:
            assert int(rank[1]) == 1
        low, sub, _ = tk.lowrank_project(W, **rule)
        assert torch.isfinite(low).all() and torch.isfinite(sub).all()


@pytest.mark.parametrize("device", cuda_only())
def test_projection_accuracy_does_not_depend_on_tf32(jacobi_kernels, device):
    W = torch.randn(2, 128, 1152, device=device)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        low, _, rank = tk.lowrank_project(W, energy=0.9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    ref_U, ref_S, ref_V, ref_rank = reference(W, energy=0.9)
    assert torch.equal(rank.cpu(), ref_rank)
    keep = torch.arange(ref_S.shape[-1]) < ref_rank.unsqueeze(-1)
    ref_low = (ref_U * (ref_S * keep).unsqueeze(-2)) @ ref_V.mT
    err = torch.linalg.norm(low.cpu().double() - ref_low) / torch.linalg.norm(W.cpu().double())
    assert float(err) <= 1e-5


@pytest.mark.parametrize("shape", RESNET_18_50, ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_resnet_layer_shapes_at_float32_tolerance(jacobi_kernels, device, shape):
    W = torch.randn(2, *shape, device=device)
    for rule in ({"energy": 0.9}, {}):
        assert_svd_contract(W, tk.truncated_svd(W, **rule), rule, exact_rank=True)
