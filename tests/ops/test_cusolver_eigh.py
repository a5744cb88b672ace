"""cuSOLVER's batched eigensolver as the composite path's eigh (trp_kernels/ops/cusolver_eigh.py,
backends.py's TRP_EIGH_IMPL): the switch and the refusals everywhere; on a GPU, syev_batched
against float64 torch.linalg.eigh on the adversarial Gram matrices, and the composite
projection on it against the same projection on torch.linalg.eigh. The emulated CUDA device has
no cuSOLVER: cuda only."""

from __future__ import annotations

import pytest
import torch

from testing import adversarial, cuda_only
from trp_kernels.ops import backends
from trp_kernels.ops.cusolver_eigh import syev_batched, unavailable_reason
from trp_kernels.ops.svd import lowrank_project_groups


def needs_cusolver(device):
    reason = unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)


# -- the switch ------------------------------------------------------------------------------

def test_unknown_eigh_impl_is_a_value_error(monkeypatch):
    monkeypatch.setenv("TRP_EIGH_IMPL", "magma")
    with pytest.raises(ValueError, match="TRP_EIGH_IMPL must be one of"):
        backends.eigh_function("cpu")
    with backends.forced(svd="eigh"), pytest.raises(ValueError, match="TRP_EIGH_IMPL"):
        lowrank_project_groups([torch.randn(2, 4, 6)], 0.9)


def test_default_is_torch_until_validated(monkeypatch):
    monkeypatch.delenv("TRP_EIGH_IMPL", raising=False)
    assert backends.CUSOLVER_EIGH_VALIDATED_BY is None
    for device in ("cpu", "cuda"):
        assert backends.default_eigh_impl(torch.device(device)) is backends.EighImpl.TORCH
        assert backends.eigh_function(device) is torch.linalg.eigh


def test_forced_cusolver_on_the_cpu_is_torch():
    # cuSOLVER has no CPU side: the composite path on the CPU keeps torch.linalg.eigh
    with backends.forced(eigh="cusolver_batched"):
        assert backends.eigh_function("cpu") is torch.linalg.eigh
        with backends.forced(svd="eigh"):
            W = torch.randn(3, 8, 20, dtype=torch.float64)
            low, _, rank = lowrank_project_groups([W], 0.9)
    with backends.forced(svd="eigh"):
        expected, _, expected_rank = lowrank_project_groups([W], 0.9)
    assert torch.equal(rank[0], expected_rank[0]) and torch.equal(low[0], expected[0])


def test_forced_restores_the_environment(monkeypatch):
    monkeypatch.setenv("TRP_EIGH_IMPL", "torch")
    with backends.forced(eigh=backends.EighImpl.CUSOLVER_BATCHED):
        assert backends.eigh_setting() is backends.EighImpl.CUSOLVER_BATCHED
    assert backends.eigh_setting() is backends.EighImpl.TORCH
    with pytest.raises(ValueError, match="eigh must be one of"):
        with backends.forced(eigh="lapack"):
            pass


@pytest.mark.skipif(torch.cuda.is_available() and unavailable_reason("cuda") is None,
                    reason="cuSOLVER's batched eigensolver is available here")
def test_forced_where_unavailable_says_why():
    assert unavailable_reason("cpu") is not None
    if torch.cuda.is_available():
        with backends.forced(eigh="cusolver_batched"), pytest.raises(RuntimeError,
                                                                      match="TRP_EIGH_IMPL"):
            backends.eigh_function("cuda")


# -- syev_batched's refusals -----------------------------------------------------------------

def test_refuses_what_is_not_a_batch_of_square_float_matrices():
    with pytest.raises(TypeError, match="G must be a torch.Tensor"):
        syev_batched([[1.0]])
    with pytest.raises(TypeError, match="G must be float32 or float64"):
        syev_batched(torch.eye(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"G must be a batch of square matrices .* \(2, 3\)"):
        syev_batched(torch.ones(2, 3))
    with pytest.raises(ValueError, match="G: cusolverDnXsyevBatched is not available"):
        syev_batched(torch.eye(3))   # a CPU tensor


# -- on a GPU --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", cuda_only(emulated=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 17, 32, 33, 64, 192, 576])
def test_matches_float64_eigh(device, dtype, n):
    needs_cusolver(device)
    for name, M in adversarial((3, n, n + 5), torch.float64):
        G = (M @ M.mT).to(device)
        lam, Q = syev_batched(G.to(dtype))
        assert lam.shape == (3, n) and Q.shape == (3, n, n) and lam.dtype == Q.dtype == dtype
        ref = torch.linalg.eigvalsh(G)
        scale = ref.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert ((lam.double() - ref).abs() / scale).max() <= 10 * n * tol, name
        eye = torch.eye(n, dtype=torch.float64, device=device)
        assert (Q.double().mT @ Q.double() - eye).abs().max() <= 10 * n * tol, name
        recon = (Q.double() * lam.double().unsqueeze(-2)) @ Q.double().mT
        assert ((recon - G).abs().amax((-2, -1)) / scale.squeeze(-1)).max() <= 10 * n * tol, name


@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_batch_shapes_and_empty(device):
    needs_cusolver(device)
    G = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=device)
    G = G @ G.mT
    lam, Q = syev_batched(G)
    assert lam.shape == (2, 3, 5) and Q.shape == (2, 3, 5, 5)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(G))
    lam, Q = syev_batched(torch.empty(0, 4, 4, device=device))
    assert lam.shape == (0, 4) and Q.shape == (0, 4, 4)


@pytest.mark.parametrize("device", cuda_only(emulated=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_composite_projection_on_it(device, dtype):
    """The composite path's projection with cuSOLVER's batched eigensolver is the one with
    torch.linalg.eigh: same ranks, the projections within the SVD contract's tolerances."""
    needs_cusolver(device)
    g = torch.Generator().manual_seed(0)
    groups = [torch.randn(5, 64, 576, generator=g), torch.randn(4, 192, 192, generator=g),
              torch.randn(2, 512, 4608, generator=g)]
    groups = [W.to(device, dtype) for W in groups]
    with backends.forced(svd="eigh", eigh="torch"):
        low, sub, rank = lowrank_project_groups(groups, 0.9)
    with backends.forced(svd="eigh", eigh="cusolver_batched"):
        low_x, sub_x, rank_x = lowrank_project_groups(groups, 0.9)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b, r, r_x in zip(low, low_x, rank, rank_x):
        assert torch.equal(r, r_x)
        assert ((a - b).norm() / a.norm()).item() <= tol
    for a, b in zip(sub, sub_x):
        assert ((a - b).norm() / a.norm()).item() <= tol


@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_reads_the_lower_triangle_as_torch_does(device):
    needs_cusolver(device)
    G = torch.randn(2, 40, 45, dtype=torch.float64, device=device)
    G = G @ G.mT
    garbage = G.tril() + torch.randn_like(G).triu(1)   # the upper triangle is not read
    lam, Q = syev_batched(garbage)
    ref_lam, _ = torch.linalg.eigh(garbage)            # UPLO="L"
    torch.testing.assert_close(lam, ref_lam)
    torch.testing.assert_close((Q * lam.unsqueeze(-2)) @ Q.mT, G)
