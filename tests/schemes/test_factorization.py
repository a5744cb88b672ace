"""Factorising conv weights: each scheme's factors are the SVD factors of its design
(docs/design.md, "The schemes"), truncated by the rank rule; HOOI refines tucker2; one batched
SVD serves a whole stack of weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trp_kernels as tk
from small_models import conv_with
from testing import devices
from trp_kernels.compression import is_decomposable
from trp_kernels.models import resnet20
from trp_kernels.ops.svd import reference_rank
from trp_kernels.schemes import factorization


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factor_mapping_of_the_design(scheme):
    """weight1 / weight2 are the sqrt(S)-split SVD factors of the scheme's matrix."""
    W = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    layer = tk.LowRankConv2d.from_conv(conv_with(W), scheme=scheme, rank=4)
    M = W.reshape(8, 45) if scheme == "channel" else W.permute(1, 2, 0, 3).reshape(15, 24)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    U, S, V = U[:, :4], S[:4], Vh[:4].T
    if scheme == "channel":
        w1 = (S.sqrt()[:, None] * V.T).reshape(4, 5, 3, 3)
        w2 = (U * S.sqrt()).reshape(8, 4, 1, 1)
    else:
        w1 = (U * S.sqrt()).reshape(5, 3, 4).permute(2, 0, 1)[..., None]
        w2 = (S.sqrt()[:, None] * V.T).reshape(4, 8, 3).permute(1, 0, 2)[:, :, None, :]
    # singular vectors are defined up to sign: compare the products of matched pairs
    signs = torch.sign((layer.weight1.reshape(4, -1) * w1.reshape(4, -1)).sum(1))
    torch.testing.assert_close(layer.weight1, w1 * signs.view(4, 1, 1, 1))
    torch.testing.assert_close(layer.weight2, w2 * signs.view(1, 4, 1, 1))


def test_factor_mapping_of_tucker2():
    """U_in, U_out: leading singular vectors of the C and N mode unfoldings; the core is
    W x_N U_out^T x_C U_in^T; the layer's convs are U_in^T, the core, U_out."""
    W = torch.randn(8, 5, 3, 2, dtype=torch.float64)
    layer = tk.LowRankConv2d.from_conv(conv_with(W), scheme="tucker2", rank=(3, 4))
    assert layer.rank == (3, 4) and layer.full_rank == (5, 8)
    U_in = torch.linalg.svd(W.transpose(0, 1).reshape(5, -1))[0][:, :3]
    U_out = torch.linalg.svd(W.reshape(8, -1))[0][:, :4]
    # compare the projectors (singular vectors are defined up to sign)
    got_in = layer.weight_in[:, :, 0, 0].T
    got_out = layer.weight_out[:, :, 0, 0]
    torch.testing.assert_close(got_in @ got_in.T, U_in @ U_in.T)
    torch.testing.assert_close(got_out @ got_out.T, U_out @ U_out.T)
    core = torch.einsum("no,ncij,cp->opij", got_out, W, got_in)
    torch.testing.assert_close(layer.core, core)
    assert tuple(layer.weight_in.shape) == (3, 5, 1, 1) and tuple(layer.core.shape) == (4, 3, 3, 2)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    three = F.conv2d(F.conv2d(F.conv2d(x, layer.weight_in), layer.core), layer.weight_out)
    torch.testing.assert_close(layer(x), three)


def test_factor_mapping_of_decoupled():
    """Per filter n, W[n] as C x (kh*kw) = sum_j sigma_nj u_nj v_nj^T: weight1 row n*r + j is
    sqrt(sigma_nj) u_nj, weight2[n, j] is sqrt(sigma_nj) v_nj, the second conv has groups N."""
    W = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    layer = tk.LowRankConv2d.from_conv(conv_with(W), scheme="decoupled", rank=2)
    assert layer.rank == 2 and layer.full_rank == 6
    assert tuple(layer.weight1.shape) == (8, 6, 1, 1) and tuple(layer.weight2.shape) == (4, 2, 3, 3)
    for n in range(4):
        U, S, Vh = torch.linalg.svd(W[n].reshape(6, 9))
        for j in range(2):
            branch = torch.outer(layer.weight1[n * 2 + j, :, 0, 0], layer.weight2[n, j].reshape(9))
            torch.testing.assert_close(branch, S[j] * torch.outer(U[:, j], Vh[j]))
    first, second = layer.to_convs()
    assert (first.kernel_size, first.groups) == ((1, 1), 1) and second.groups == 4


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_matrix_schemes_keep_the_best_rank_r_approximation(scheme):
    conv = nn.Conv2d(8, 16, 3, padding=1)
    M = factorization.weight_to_matrix(conv.weight.detach().double(), scheme)
    S = torch.linalg.svdvals(M)
    for kwargs in ({"energy": 0.7}, {"threshold": float(S[5] + S[6]) / 2}, {"rank": 3},
                   {"energy": 0.9, "rank": 5}):
        layer = tk.LowRankConv2d.from_conv(conv, scheme=scheme, **kwargs)
        rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
        assert layer.rank == int(reference_rank(S, **rule))
        # the reconstruction is the best rank-r approximation
        err = torch.linalg.norm(factorization.weight_to_matrix(
            (layer.full_weight() - conv.weight).detach().double(), scheme))
        assert abs(float(err) - float(torch.linalg.norm(S[layer.rank:]))) < 1e-4


@pytest.mark.parametrize("kwargs", [{"energy": 0.7}, {"threshold": 0.2}, {"rank": 3},
                                    {"energy": 0.95, "rank": 4}])
def test_decoupled_filters_below_the_layer_rank_keep_only_their_own(kwargs):
    conv = nn.Conv2d(6, 9, 3).double()
    W = conv.weight.detach()
    rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
    decoupled = tk.LowRankConv2d.from_conv(conv, scheme="decoupled", **kwargs)
    per_filter = reference_rank(torch.linalg.svdvals(W.reshape(9, 6, 9)), **rule)
    for n in range(9):
        r = int(per_filter[n])
        err = torch.linalg.norm((decoupled.full_weight().detach() - W)[n])
        best = torch.linalg.norm(torch.linalg.svdvals(W[n].reshape(6, 9))[r:])
        assert abs(float(err) - float(best)) < 1e-10


def test_hooi_lowers_the_error_and_is_kept_only_then():
    torch.manual_seed(1)
    W = torch.randn(5, 12, 10, 3, 3, dtype=torch.float64)
    hosvd = factorization.decompose_weights(W, "tucker2", rank=(4, 5))
    hooi = factorization.decompose_weights(W, "tucker2", rank=(4, 5), hooi_iterations=3)
    for w, a, b in zip(W, hosvd, hooi):
        err_hosvd = torch.linalg.norm(factorization.full_weight(*a, "tucker2") - w)
        err_hooi = torch.linalg.norm(factorization.full_weight(*b, "tucker2") - w)
        assert err_hooi < err_hosvd - 1e-6
    # at full rank HOSVD is exact: nothing to gain, so HOOI keeps the HOSVD factors
    exact = factorization.decompose_weights(W[:1], "tucker2")[0]
    again = factorization.decompose_weights(W[:1], "tucker2", hooi_iterations=2)[0]
    for a, b in zip(exact, again):
        assert torch.equal(a, b)
    layer = tk.LowRankConv2d.from_conv(conv_with(W[0]), "tucker2", rank=(4, 5), hooi_iterations=3)
    torch.testing.assert_close(layer.full_weight(), factorization.full_weight(*hooi[0], "tucker2"))


def test_one_batched_svd_per_shape_group_and_mode(monkeypatch):
    """tucker2: one call per mode unfolding of each weight shape; decoupled: one per shape
    (every filter of every layer of that shape)."""
    calls = []
    real = factorization.truncated_svd

    def counting(W, *args, **kwargs):
        calls.append(tuple(W.shape))
        return real(W, *args, **kwargs)

    monkeypatch.setattr(factorization, "truncated_svd", counting)
    model = resnet20(in_channels=1)
    shapes = {tuple(m.weight.shape) for n, m in model.named_modules()
              if is_decomposable(m) and n != "conv1"}
    tk.decompose_model(copy.deepcopy(model), "tucker2", energy=0.9, skip=["conv1"])
    assert len(calls) == 2 * len(shapes) and max(c[0] for c in calls) == 6
    calls.clear()
    tk.decompose_model(copy.deepcopy(model), "decoupled", energy=0.9, skip=["conv1"])
    assert len(calls) == len(shapes)
    assert (6, 16, 16, 9) in calls


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factor_matrices_multiply_to_the_weight_matrix(device, scheme):
    layer = tk.LowRankConv2d(6, 10, (3, 2), rank=4, scheme=scheme, device=device)
    left, right = factorization.factor_matrices(layer.weight1, layer.weight2, layer.scheme)
    M = factorization.weight_to_matrix(
        factorization.full_weight(layer.weight1, layer.weight2, scheme), scheme)
    torch.testing.assert_close(left @ right.T, M)
    assert left.shape[1] == right.shape[1] == 4
