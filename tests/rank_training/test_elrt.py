"""Low-rank training from scratch (ELRT) in every scheme (one SchemeCase each,
tests/scheme_cases.py): make_lowrank's layers, ranks and spectral initialisation, and the
orthogonality penalties against float64 references."""

import math

import pytest
import torch
from torch import nn

import trp_kernels as tk
from scheme_cases import every_scheme
from testing import devices
from trp_kernels.models import resnet20
from trp_kernels.ops.svd import reference_lowrank_project
from trp_kernels.rank_training.elrt import make_lowrank, orthogonality_penalty
from trp_kernels.schemes import factorization
from trp_kernels.schemes.factorization import (decompose_weight, factor_matrices,
                                               factors_from_svd, full_weight, weight_to_matrix)
from trp_kernels.schemes.layers import LowRankConv2d

SCHEMES = ["channel", "spatial"]


@every_scheme
def test_make_lowrank_trains_factors_only(case):
    torch.manual_seed(3)
    model = case.adapt(resnet20(in_channels=1))
    fresh = model.layer2[1].conv1.weight.detach().clone()
    report = make_lowrank(model, case.name, rank=case.fraction)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LowRankConv2d)}
    assert len(report.layers) == 18 and type(model.conv1) is nn.Conv2d
    assert set(layers) == {entry.name for entry in report.layers if not entry.kept_dense}
    # a layer whose factorised form costs more than the conv stays dense (the dense fallback of
    # decompose_model): decoupled runs its 1x1 conv at the input resolution
    assert {entry.name for entry in report.layers if entry.kept_dense} == \
        case.kept_dense_in_resnet20
    scheme = case.scheme
    for entry in report.layers:
        fractions = scheme.rank_parts(case.fraction)
        expected = tuple(math.ceil(f * k) for f, k in zip(fractions,
                                                          scheme.rank_parts(entry.full_rank)))
        assert scheme.rank_parts(entry.rank) == expected
    # No full-size weight is left for the low-rank layers: only their factors are parameters.
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith(".weight") and n.rsplit(".", 1)[0] in layers for n in names)
    # spectral initialisation: the factorisation of the fresh dense weight at that rank
    layer = model.layer2[1].conv1
    expected = decompose_weight(fresh, case.name, rank=layer.rank)
    torch.testing.assert_close(layer.full_weight(), full_weight(*expected, case.name))
    orthogonality_penalty(model).backward()
    penalised = [layer.weight_in, layer.weight_out] if case.name == "tucker2" else layer.factors
    assert all(p.grad is not None for p in penalised)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_spectral_init_is_the_truncated_fresh_weight(scheme):
    torch.manual_seed(3)
    model = resnet20()
    fresh = model.layer2[1].conv1.weight.detach().clone()
    make_lowrank(model, scheme, rank=5)
    layer = model.layer2[1].conv1
    expected = reference_lowrank_project(weight_to_matrix(fresh, scheme).double(), max_rank=5)
    got = weight_to_matrix(layer.full_weight().detach(), scheme).double()
    torch.testing.assert_close(got, expected.W_low, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_orthogonality_penalty(device, scheme):
    layer = LowRankConv2d(6, 10, 3, rank=4, scheme=scheme, device=device, dtype=torch.float64)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), layer)
    left, right = factor_matrices(layer.weight1, layer.weight2, layer.scheme)
    eye = torch.eye(4, dtype=torch.float64, device=device)
    expected = ((left.T @ left - eye) ** 2).sum() + ((right.T @ right - eye) ** 2).sum()
    torch.testing.assert_close(orthogonality_penalty(model), expected)
    # Orthonormal factors (an SVD with unit singular values) cost nothing.
    m, n = left.shape[0], right.shape[0]
    U = torch.linalg.qr(torch.randn(m, 4, dtype=torch.float64, device=device))[0]
    V = torch.linalg.qr(torch.randn(n, 4, dtype=torch.float64, device=device))[0]
    S = torch.ones(4, dtype=torch.float64, device=device)
    weight1, weight2 = factors_from_svd(U, S, V, 4, layer.weight_shape, scheme)
    with torch.no_grad():
        layer.weight1.copy_(weight1)
        layer.weight2.copy_(weight2)
    assert orthogonality_penalty(model).item() < 1e-20


def test_penalty_gradient_descent_orthonormalises_the_factors():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    make_lowrank(model, "channel", rank=0.5)
    factors = [p for n, p in model.named_parameters() if n.endswith(("weight1", "weight2"))]
    optimizer = torch.optim.SGD(factors, lr=0.02)
    start = orthogonality_penalty(model).item()
    for _ in range(50):
        optimizer.zero_grad()
        orthogonality_penalty(model).backward()
        optimizer.step()
    assert orthogonality_penalty(model).item() < 0.05 * start


def test_penalty_of_a_model_without_low_rank_layers_is_zero():
    assert orthogonality_penalty(resnet20()).item() == 0.0


def test_rank_is_required_and_checked():
    with pytest.raises(ValueError, match="rank is required"):
        make_lowrank(resnet20(), "channel", rank=None)
    with pytest.raises(ValueError, match="rank"):
        make_lowrank(resnet20(), "channel", rank=1.5)
    model = resnet20()
    report = make_lowrank(model, "channel", rank=40)   # an int rank caps each layer at its full rank
    ranks = {l.name: l.rank for l in report.layers}
    assert ranks["layer1.0.conv1"] == 16 and model.layer3[0].conv1.rank == 40
    # the full rank is not cheaper than the dense conv, so that layer stays one
    assert type(model.layer1[0].conv1) is nn.Conv2d


def _penalty_reference(factors, kind):
    total = torch.zeros((), dtype=torch.float64)
    for A in factors:
        A = A.detach().double()
        for a in A.reshape(-1, *A.shape[-2:]):
            m, r = a.shape
            so = torch.linalg.matrix_norm(a.T @ a - torch.eye(r, dtype=torch.float64)) ** 2
            if kind == "so":
                total += so
            else:
                total += (so + torch.linalg.matrix_norm(a @ a.T - torch.eye(m, dtype=torch.float64)) ** 2) / r
    return total


@every_scheme
def test_orthogonality_penalty_values(case):
    scheme = case.name
    rank = (3, 4) if scheme == "tucker2" else 3
    layer = tk.LowRankConv2d(5, 6, case.kernel(3), rank=rank, scheme=scheme,
                             dtype=torch.float64)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), layer)
    with torch.no_grad():
        for p in layer.factors:
            p.mul_(1.7)               # away from orthonormal
    if scheme == "tucker2":
        U_in, U_out = layer.weight_in[:, :, 0, 0].T, layer.weight_out[:, :, 0, 0]
        factors = (U_in, U_out)
    elif scheme == "decoupled":
        factors = (layer.weight1.reshape(6, 3, 5).transpose(1, 2),
                   layer.weight2.reshape(6, 3, 9).transpose(1, 2))
    else:
        factors = factorization.factor_matrices(layer.weight1, layer.weight2, scheme)
    for kind in ("so", "dso"):
        torch.testing.assert_close(orthogonality_penalty(model, kind=kind),
                                   _penalty_reference(factors, kind))
    default = "dso" if scheme == "tucker2" else "so"
    torch.testing.assert_close(orthogonality_penalty(model), _penalty_reference(factors, default))


def test_dso_of_orthonormal_tucker2_factors_is_its_floor():
    """HOSVD factors have orthonormal columns: ||A^T A - I|| = 0 and ||A A^T - I||^2 = m - r."""
    layer = tk.LowRankConv2d.from_conv(nn.Conv2d(6, 8, 3).double(), "tucker2", rank=(2, 5))
    expected = (6 - 2) / 2 + (8 - 5) / 5
    assert abs(orthogonality_penalty(layer, kind="dso").item() - expected) < 1e-12
    assert orthogonality_penalty(layer, kind="so").item() < 1e-20


@every_scheme
def test_penalty_of_a_rank_zero_layer_is_zero(case):
    layer = tk.LowRankConv2d(3, 5, case.kernel(3), rank=0, stride=2, padding=1,
                             scheme=case.name)
    assert orthogonality_penalty(layer).item() == 0.0
