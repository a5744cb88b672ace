"""The composite SVD path (TRP_SVD_IMPL=eigh) held to the contract of the compiled op, and the
rank rule's rounding floor on every CPU path (which path runs: test_backends.py)."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from trp_kernels.ops import backends
from trp_kernels.ops.svd import lowrank_project_groups, project_matrices, reference_rank

from testing import devices, diag_matrix, dtypes, svd_tol, with_spectrum

EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture
def eigh():
    with backends.forced(svd="eigh"):
        yield


@pytest.mark.parametrize("dtype", dtypes)
def test_matches_op_on_cpu(dtype):
    """Same ranks as the compiled op and the same projection, to the contract's tolerance."""
    W = torch.randn(6, 24, 60, dtype=dtype, generator=torch.Generator().manual_seed(3))
    for rule in ({"energy": 0.9}, {"threshold": 2.0}, {"max_rank": 5}):
        with backends.forced(svd="jacobi"):
            op = tk.lowrank_project(W, **rule)
        with backends.forced(svd="eigh"):
            comp = tk.lowrank_project(W, **rule)
        assert torch.equal(op.rank, comp.rank)
        scale = float(torch.linalg.norm(W.double()))
        assert torch.linalg.norm(op.W_low.double() - comp.W_low.double()) <= svd_tol[dtype]["recon"] * scale


@pytest.mark.parametrize("dtype", dtypes)
def test_resolved_values_to_eps_s1(eigh, dtype):
    """Singular values the Gram matrix resolves come out to about eps s_1, as LAPACK's SVD (the
    norms ||W^T q_i||; sqrt of the eigenvalues would err by up to eps s_1^2 / s_i, 2e-10 s_1
    at the 1e-6 s_1 of this spectrum)."""
    W = with_spectrum((3, 40, 90), torch.logspace(0, -6, 40), torch.Generator().manual_seed(5))
    S = tk.truncated_svd(W.to(dtype)).S.double()
    ref = torch.linalg.svdvals(W.to(dtype).double())
    rounding = 0.0 if dtype == torch.float64 else 2.0 ** -24   # of the float32 output
    assert ((S - ref).abs() <= 1e-14 * ref[..., :1] + rounding * ref).all()


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
def test_empty_groups_and_batches(eigh, device, dtype):
    groups = [torch.randn(0, 5, 7, dtype=dtype, device=device),
              torch.randn(3, 4, 0, dtype=dtype, device=device),
              torch.randn(2, 5, 9, dtype=dtype, device=device)]
    lows, subs, ranks = lowrank_project_groups(groups, energy=0.9)
    assert [tuple(low.shape) for low in lows] == [tuple(g.shape) for g in groups]
    assert ranks[0].shape == (0,) and ranks[1].tolist() == [0, 0, 0]
    torch.testing.assert_close(lows[2], tk.lowrank_project(groups[2], energy=0.9).W_low)


@pytest.mark.parametrize("device", devices)
def test_groups_sharing_k_are_diagonalised_together(eigh, device):
    """Groups with the same k share one eigh call; results equal the per-group projection."""
    g = torch.Generator().manual_seed(7)
    groups = [torch.randn(4, 16, 36, generator=g), torch.randn(2, 16, 144, generator=g).double(),
              torch.randn(3, 50, 16, generator=g), torch.randn(2, 8, 8, generator=g)]
    groups = [G.to(device) for G in groups]
    lows, subs, ranks = lowrank_project_groups(groups, energy=0.8)
    for G, low, sub, rank in zip(groups, lows, subs, ranks):
        alone = tk.lowrank_project(G, energy=0.8)
        assert low.dtype == G.dtype and low.is_contiguous() and torch.equal(rank, alone.rank)
        torch.testing.assert_close(low, alone.W_low)
        torch.testing.assert_close(sub, alone.subgrad)


def test_not_differentiable_like_the_op(eigh):
    W = torch.randn(2, 6, 9, requires_grad=True)
    assert not any(t.requires_grad for t in tk.truncated_svd(W))
    assert not any(t.requires_grad for t in tk.lowrank_project(W))


# --- non-finite input: rank -1 and NaN, raised by the wrapper --------------------------------


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
def test_nonfinite_input(eigh, device, dtype):
    W = torch.randn(3, 5, 8, dtype=dtype, device=device)
    for bad in (float("nan"), float("inf"), -float("inf")):
        Wb = W.clone()
        Wb[1, 2, 3] = bad
        for fn in (tk.truncated_svd, tk.lowrank_project):
            with pytest.raises(ValueError, match="non-finite.*matrix 1"):
                fn(Wb, energy=0.9)
        U, S, V, rank = tk.truncated_svd(Wb, energy=0.9, check_finite=False)
        clean = tk.truncated_svd(W, energy=0.9)
        assert rank.tolist() == [int(clean.rank[0]), -1, int(clean.rank[2])]
        assert U[1].isnan().all() and S[1].isnan().all() and V[1].isnan().all()
        for a, b in zip((U, S, V), clean[:3]):   # the other matrices are unaffected
            torch.testing.assert_close(a[0::2], b[0::2])
        low, sub, rank = tk.lowrank_project(Wb, check_finite=False)
        assert rank[1] == -1 and low[1].isnan().all() and sub[1].isnan().all()
        assert torch.isfinite(low[0::2]).all()
    with pytest.raises(ValueError, match=r"groups\[1\].*matrix 1"):
        lowrank_project_groups([W, Wb])
    with pytest.raises(ValueError, match=r"matrices\[2\]"):
        project_matrices([W[0], W[1], Wb[1]])


@pytest.mark.parametrize("dtype", dtypes)
def test_nonfinite_only_the_op_raises_without_check(dtype):
    """The selection reaches the kernels: the CPU op raises on inf even with check_finite=False,
    the composite path marks it with rank -1."""
    W = torch.randn(2, 4, 6, dtype=dtype)
    W[0, 0, 0] = float("inf")
    with backends.forced(svd="jacobi"), pytest.raises(ValueError, match="non-finite"):
        tk.truncated_svd(W, check_finite=False)
    with backends.forced(svd="eigh"):
        assert tk.truncated_svd(W, check_finite=False).rank[0] == -1


def test_composite_path_under_compile_and_export(eigh):
    def project(W):
        low, sub, rank = tk.lowrank_project(W, energy=0.9, check_finite=False)
        return low + 1e-3 * sub, rank

    W = torch.randn(3, 16, 40)
    compiled = torch.compile(project, fullgraph=True, backend="aot_eager")
    low, rank = compiled(W)
    ref_low, ref_rank = project(W)
    torch.testing.assert_close(low, ref_low)
    assert torch.equal(rank, ref_rank)

    class Svd(torch.nn.Module):
        def forward(self, W):
            return tuple(tk.truncated_svd(W, max_rank=4, check_finite=False))

    exported = torch.export.export(Svd(), (W,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "aten.linalg_eigh.default" in targets and not any("trp." in t for t in targets)
    for got, want in zip(exported.module()(W), tk.truncated_svd(W, max_rank=4)):
        torch.testing.assert_close(got, want)


# --- the rank rule's rounding floor, on every CPU path ---------------------------------------

CPU_PATHS = ["jacobi", "eigh"]


def rank3_with_tail_at_rounding_floor(k=8, n=12, seed=0):
    """s = 3, 2, 1 and k - 3 values whose squares are each eps * total: every one changes the
    float64 running sum (so a cut without slack keeps all k), together they stay under the
    rounding floor k * eps * total of the sum."""
    tail = (EPS64 * 14.0) ** 0.5
    return with_spectrum((k, n), [3.0, 2.0, 1.0] + [tail] * (k - 3),
                         torch.Generator().manual_seed(seed))


def exact_rank3(dtype, shape=(8, 12)):
    """Small-integer factors: the product is exactly representable, so exactly rank 3."""
    g = torch.Generator().manual_seed(11)
    m, n = shape
    return (torch.randint(-4, 5, (m, 3), generator=g) @ torch.randint(-4, 5, (3, n), generator=g)).to(dtype)


def test_rule_tail_below_rounding_floor_counts_as_zero():
    S = torch.tensor([3.0, 2.0, 1.0] + [(EPS64 * 14.0) ** 0.5] * 5, dtype=torch.float64)
    running = torch.cumsum(S * S, 0)
    assert running[-1] > running[2]                    # the tail does change the float64 sum
    assert int(reference_rank(S, energy=1.0)) == 3
    assert int(reference_rank(S, energy=0.5)) == 1
    # the slack is the same for every energy: a shortfall below it does not add a value
    S2 = torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert int(reference_rank(S2, energy=0.9 + 2 * EPS64)) == 1
    # ... and it never hides real energy just above the floor
    S3 = torch.tensor([1.0, 1e-7], dtype=torch.float64)
    assert int(reference_rank(S3, energy=1.0)) == 2


@pytest.mark.parametrize("impl", CPU_PATHS)
def test_energy_one_keeps_numerical_rank_float64(impl):
    with backends.forced(svd=impl):
        for seed in range(3):
            W = rank3_with_tail_at_rounding_floor(seed=seed)
            assert int(tk.truncated_svd(W, energy=1.0).rank) == 3
            assert int(tk.truncated_svd(W.mT, energy=1.0).rank) == 3
            assert int(tk.lowrank_project(W, energy=1.0).rank) == 3
        for shape in ((8, 12), (40, 9), (24, 24)):
            assert int(tk.truncated_svd(exact_rank3(torch.float64, shape), energy=1.0).rank) == 3
            W = with_spectrum(shape, [3.0, 2.0, 1.0], torch.Generator().manual_seed(1))
            assert int(tk.truncated_svd(W, energy=1.0).rank) == 3


@pytest.mark.parametrize("impl", CPU_PATHS)
def test_energy_one_keeps_numerical_rank_float32(impl):
    with backends.forced(svd=impl):
        for shape in ((8, 12), (40, 9), (24, 24)):
            W = exact_rank3(torch.float32, shape)
            assert int(tk.truncated_svd(W, energy=1.0).rank) == 3
            assert int(tk.lowrank_project(W, energy=1.0).rank) == 3


@pytest.mark.parametrize("impl", CPU_PATHS)
@pytest.mark.parametrize("dtype", dtypes)
def test_compiled_and_python_rules_cut_alike(impl, dtype):
    """Diagonal matrices have exact singular values, so the op's C++ rule and the Python rule
    see the same numbers: the ranks must agree for every energy, at the floor included."""
    tail = (EPS64 * 14.0) ** 0.5
    values = [3.0, 2.0, 1.0, 0.5, 0.25] if dtype == torch.float32 else [3.0, 2.0, 1.0] + [tail] * 3
    W = diag_matrix(values, dtype=dtype)
    S = torch.tensor(values + [0.0] * (6 - len(values)), dtype=dtype).double()
    energies = [0.1, 0.5, 0.9, 0.99, 1.0 - 1e-12, 1.0, 0.9 + 2 * EPS64]
    with backends.forced(svd=impl):
        for energy in energies:
            assert int(tk.truncated_svd(W, energy=energy).rank) == int(reference_rank(S, energy=energy)), energy
