"""CUDA-only checks of trp::truncated_svd and trp::lowrank_project (docs/cuda_svd.md): agreement
with the CPU op, every algorithm path, determinism, CUDA-graph capture, the non-finite contract,
empty batches, and the ResNet-18/50 layer shapes against a float64 reference. The contract
tests of tests/test_svd.py run on CUDA as well (they parametrize over testing.devices)."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from trp_kernels.svd import lowrank_project_groups, reference_rank

from testing import svd_tol, with_spectrum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Shapes that select each path of csrc/cuda/svd_launch.cpp: the fused kernel (k <= 64: wide,
# tall, odd k) and the blocked Jacobi with 32-wide pair tiles (64 < k <= 512, padded or not)
# and 64-wide ones (k > 512).
FUSED = [(16, 144), (64, 576), (48, 48), (33, 17)]
BLOCKED_32 = [(96, 96), (70, 100), (130, 90), (128, 1152)]
BLOCKED_64 = [(520, 600)]
PATHS = FUSED + BLOCKED_32 + BLOCKED_64

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


def max_abs(x):
    return float(x.abs().max()) if x.numel() else 0.0


def assert_svd_close(W, out, rule, dtype):
    """The SVD contract per matrix: rank, kept singular values, optimal rank-r error and
    orthonormal kept vectors (those with s >= 1e-2 s_1), at the tolerances of testing.svd_tol."""
    tol = svd_tol[dtype]
    U, S, V, rank = (t.cpu().double() if t.is_floating_point() else t.cpu() for t in out)
    m, n = W.shape[-2:]
    k = min(m, n)
    _, Sref, _, rref = reference(W, **rule)
    Wd = W.double().cpu().reshape(-1, m, n)
    for b in range(Wd.shape[0]):
        u, s, v = U.reshape(-1, m, k)[b], S.reshape(-1, k)[b], V.reshape(-1, n, k)[b]
        sref, r = Sref.reshape(-1, k)[b], int(rank.reshape(-1)[b])
        s1 = float(sref[0])
        assert r == int(rref.reshape(-1)[b])
        assert not s[r:].any() and not u[:, r:].any() and not v[:, r:].any()
        assert max_abs(s[:r] - sref[:r]) <= tol["sigma"] * s1
        err = float(torch.linalg.norm(Wd[b] - (u * s) @ v.T))
        best = float(torch.linalg.norm(sref[r:]))
        assert abs(err - best) <= tol["recon"] * float(torch.linalg.norm(Wd[b]))
        big = int((s[:r] >= 1e-2 * s1).sum())
        for Q in (u[:, :big], v[:, :big]):
            assert max_abs(Q.T @ Q - torch.eye(big, dtype=torch.float64)) <= tol["ortho"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", PATHS, ids=str)
def test_every_path_matches_the_cpu_op(shape, dtype):
    W = torch.randn(2, *shape, dtype=dtype)
    tol = svd_tol[dtype]
    for rule in ({}, {"energy": 0.9}, {"threshold": 1.0, "max_rank": 40}):
        gpu = tk.truncated_svd(W.cuda(), **rule)
        cpu = tk.truncated_svd(W, **rule)
        assert torch.equal(gpu.rank.cpu(), cpu.rank)
        s1 = float(cpu.S[..., 0].max())
        assert float((gpu.S.cpu() - cpu.S).abs().max()) <= tol["sigma"] * s1
        assert_svd_close(W, gpu, rule, dtype)
        low, sub, rank = tk.lowrank_project(W.cuda(), **rule)
        low_cpu, sub_cpu, rank_cpu = tk.lowrank_project(W, **rule)
        assert torch.equal(rank.cpu(), rank_cpu)
        scale = float(torch.linalg.norm(W.double()))
        low_err = float(torch.linalg.norm(low.cpu().double() - low_cpu.double()))
        assert low_err <= tol["recon"] * scale
        sub_err = float(torch.linalg.norm(sub.cpu().double() - sub_cpu.double()))
        assert sub_err <= tol["ortho"] * max(1.0, float(rank_cpu.max())) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 10), (80, 100), (100, 530)], ids=str)
def test_kept_zero_singular_values_are_completed(shape, dtype):
    # rank 3 and no criterion: every column is kept, the factors must stay orthonormal. float32
    # flushes the Gram noise floor to exact zeros (as the CPU kernel); float64, like LAPACK,
    # leaves rounding-level values.
    W = with_spectrum((2, *shape), [3.0, 2.0, 1.0]).to(dtype)
    U, S, V, rank = tk.truncated_svd(W.cuda())
    k = min(shape)
    assert rank.tolist() == [k, k]
    if dtype == torch.float32:
        assert not S[:, 3:].any()
    else:
        assert float(S[:, 3:].max()) <= 1e-13 * 3.0
    eye = torch.eye(k, dtype=torch.float64)
    for Q in (U.double().cpu(), V.double().cpu()):
        assert float((Q.mT @ Q - eye).abs().max()) < (1e-5 if dtype == torch.float32 else 1e-10)
    low, sub, _ = tk.lowrank_project(W.cuda())
    assert torch.isfinite(sub).all()
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(low.cpu().double(), W.double(), rtol=0, atol=atol)


@pytest.mark.parametrize("shape", [(64, 576), (130, 90)], ids=str)
def test_repeated_calls_are_bitwise_identical(shape):
    W = torch.randn(3, *shape, device="cuda")
    first = tk.lowrank_project(W, energy=0.9)
    factors = tk.truncated_svd(W, energy=0.9)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, tk.lowrank_project(W, energy=0.9)))
        assert all(torch.equal(a, b) for a, b in zip(factors, tk.truncated_svd(W, energy=0.9)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(32, 288), (96, 96)], ids=str)
def test_graph_capture_and_replay(shape, dtype):
    static = torch.randn(4, *shape, device="cuda", dtype=dtype)
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


def test_groups_run_concurrently_and_match_single_calls():
    # lowrank_project_groups runs each group on its own stream: the same kernels as
    # lowrank_project, so the same bits, and the current stream sees every result.
    groups = [torch.randn(6, 16, 144, device="cuda"), torch.randn(5, 96, 96, device="cuda"),
              torch.randn(3, 64, 576, device="cuda", dtype=torch.float64),
              torch.randn(2, 130, 90, device="cuda")]
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
def test_nonfinite_matrix_gets_rank_minus_one(shape, dtype):
    W = torch.randn(3, *shape, device="cuda", dtype=dtype)
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
def test_empty_batches_and_matrices(shape):
    W = torch.randn(shape, device="cuda")
    k = min(shape[-2:])
    U, S, V, rank = tk.truncated_svd(W)
    assert U.shape == (*shape[:-1], k) and S.shape == (shape[0], k)
    assert V.shape == (shape[0], shape[2], k)
    assert rank.shape == (shape[0],) and not rank.any()
    low, sub, rank = tk.lowrank_project(W)
    assert low.shape == shape and sub.shape == shape and rank.shape == (shape[0],)


@pytest.mark.parametrize("shape", [(16, 144), (96, 96)], ids=str)
def test_zero_and_rank_one_matrices_give_no_nan(shape):
    u, v = torch.randn(shape[0], 1), torch.randn(1, shape[1])
    W = torch.stack([torch.zeros(shape), u @ v, torch.eye(*shape), 2 * torch.eye(*shape)]).cuda()
    for rule in ({}, {"energy": 0.9}, {"threshold": 0.5}):
        U, S, V, rank = tk.truncated_svd(W, **rule)
        assert all(torch.isfinite(t).all() for t in (U, S, V))
        assert int(rank[0]) == 0 and not U[0].any() and not S[0].any()
        if "energy" in rule or "threshold" in rule:
            assert int(rank[1]) == 1
        low, sub, _ = tk.lowrank_project(W, **rule)
        assert torch.isfinite(low).all() and torch.isfinite(sub).all()


def test_projection_accuracy_does_not_depend_on_tf32():
    W = torch.randn(2, 128, 1152, device="cuda")
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
def test_resnet_layer_shapes_at_float32_tolerance(shape):
    W = torch.randn(2, *shape, device="cuda")
    for rule in ({"energy": 0.9}, {}):
        assert_svd_close(W, tk.truncated_svd(W, **rule), rule, torch.float32)
