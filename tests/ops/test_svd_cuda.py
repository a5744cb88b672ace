"""CUDA only (docs/cuda_svd.md): the Jacobi SVD kernels agree with the CPU op on every algorithm
path of csrc/cuda/svd_launch.cpp; determinism, CUDA-graph capture, streams of the groups op, the
non-finite contract, empty batches and the ResNet-18/50 layer shapes. Marked ``cuda``: skipped
without a GPU. The same checks run on the emulated CUDA device (tests/emulated_cuda.py) but for
CUDA graphs and concurrent streams, which it does not have, and the shapes too large to emulate
in the suite's time: the ResNet layers, and k > 512, whose kernels run once per launch path in
tests/ops/test_kernel_tour.py."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from testing import (EMULATED_CUDA, adversarial, assert_svd_contract, cuda_only, each_schedule,
                     float64_svd, svd_tol, with_spectrum)
from trp_kernels.ops import backends
from trp_kernels.ops.svd import lowrank_project_groups, reference_rank

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
    if device == EMULATED_CUDA and shape in BLOCKED_64:
        pytest.skip("k > 512 takes half a minute a call in emulation: see test_kernel_tour.py")
    if device == EMULATED_CUDA and shape == (128, 1152):
        pytest.skip("the paths of (96, 96), at several times its cost in emulation")
    W = torch.randn(2, *shape, dtype=dtype)
    tol = svd_tol[dtype]
    reference = float64_svd(W)
    for rule in ({}, {"energy": 0.9}, {"threshold": 1.0, "max_rank": 40}):
        gpu = tk.truncated_svd(W.to(device), **rule)
        cpu = tk.truncated_svd(W, **rule)
        assert torch.equal(gpu.rank.cpu(), cpu.rank)
        s1 = float(cpu.S[..., 0].max())
        assert float((gpu.S.cpu() - cpu.S).abs().max()) <= tol["sigma"] * s1
        assert_svd_contract(W, gpu, rule, exact_rank=True, reference=reference)
        low, sub, rank = tk.lowrank_project(W.to(device), **rule)
        low_cpu, sub_cpu, rank_cpu = tk.lowrank_project(W, **rule)
        assert torch.equal(rank.cpu(), rank_cpu)
        scale = float(torch.linalg.norm(W.double()))
        low_err = float(torch.linalg.norm(low.cpu().double() - low_cpu.double()))
        assert low_err <= tol["recon"] * scale
        sub_err = float(torch.linalg.norm(sub.cpu().double() - sub_cpu.double()))
        assert sub_err <= tol["ortho"] * max(1.0, float(rank_cpu.max())) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", cuda_only())
def test_adversarial_matrices_on_the_blocked_path(jacobi_kernels, device, dtype):
    # The contract tests' matrices (test_svd_contract.py) are small enough for the fused kernel;
    # here they are all of k > 64, in one batch.
    W = torch.stack([M for _, M in adversarial((90, 70), dtype)])
    for rule in ({}, {"threshold": 0.5, "max_rank": 30}):
        assert_svd_contract(W, tk.truncated_svd(W.to(device), **rule), rule)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 10), (80, 100), (100, 530)], ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_kept_zero_singular_values_are_completed(jacobi_kernels, device, shape, dtype):
    # rank 3 and no criterion: every column is kept, the factors must stay orthonormal. float32
    # flushes the Gram noise floor to exact zeros (as the CPU kernel); float64, like LAPACK,
    # leaves rounding-level values.
    if device == EMULATED_CUDA and shape == (100, 530):
        pytest.skip("the paths of (80, 100), at several times its cost in emulation")
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
    for schedule in each_schedule(device):
        with schedule:
            projected, again = tk.lowrank_project(W, energy=0.9), tk.truncated_svd(W, energy=0.9)
        assert all(torch.equal(a, b) for a, b in zip(first, projected))
        assert all(torch.equal(a, b) for a, b in zip(factors, again))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(32, 288), (96, 96)], ids=str)
@pytest.mark.parametrize("device", cuda_only(emulated=False))
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


@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_groups_run_concurrently_and_match_single_calls(jacobi_kernels, device):
    # lowrank_project_groups runs each group on its own stream: the same kernels as
    # lowrank_project, and the current stream sees every result. Equal up to rounding, not
    # bitwise: cuBLAS (the blocked path's products) guarantees the same bits only on one stream.
    groups = [torch.randn(6, 16, 144, device=device), torch.randn(5, 96, 96, device=device),
              torch.randn(3, 64, 576, device=device, dtype=torch.float64),
              torch.randn(2, 130, 90, device=device)]
    lows, subs, ranks = lowrank_project_groups(groups, energy=0.9)
    for g, low, sub, rank in zip(groups, lows, subs, ranks):
        single = tk.lowrank_project(g, energy=0.9)
        torch.testing.assert_close(low, single.W_low)
        torch.testing.assert_close(sub, single.subgrad)
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
@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_resnet_layer_shapes_at_float32_tolerance(jacobi_kernels, device, shape):
    W = torch.randn(2, *shape, device=device)
    reference = float64_svd(W)
    for rule in ({"energy": 0.9}, {}):
        assert_svd_contract(W, tk.truncated_svd(W, **rule), rule, exact_rank=True,
                            reference=reference)
