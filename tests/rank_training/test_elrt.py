import math

import pytest
import torch
from testing import devices
from torch import nn

from trp_kernels.schemes.factorization import factors_from_svd, full_weight, weight_to_matrix
from trp_kernels.schemes.layers import LowRankConv2d
from trp_kernels.schemes.factorization import factor_matrices
from trp_kernels.rank_training.elrt import make_lowrank, orthogonality_penalty
from trp_kernels.models import resnet20
from trp_kernels.ops.svd import reference_lowrank_project

SCHEMES = ["channel", "spatial"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_decomposable_conv_but_the_first_becomes_low_rank(scheme):
    model = resnet20(in_channels=1)
    report = make_lowrank(model, scheme, rank=0.25)
    assert type(model.conv1) is nn.Conv2d
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LowRankConv2d)}
    assert len(layers) == len(report.layers) == 18
    for entry in report.layers:
        assert entry.rank == math.ceil(0.25 * entry.full_rank)
    # No full-size weight is left for the low-rank layers: only their factors are parameters.
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith(".weight") and n.rsplit(".", 1)[0] in layers for n in names)


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
def test_factor_matrices_multiply_to_the_weight_matrix(device, scheme):
    layer = LowRankConv2d(6, 10, (3, 2), rank=4, scheme=scheme, device=device)
    left, right = factor_matrices(layer.weight1, layer.weight2, layer.scheme)
    M = weight_to_matrix(full_weight(layer.weight1, layer.weight2, scheme), scheme)
    torch.testing.assert_close(left @ right.T, M)
    assert left.shape[1] == right.shape[1] == 4


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
