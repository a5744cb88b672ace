"""The tucker2 and decoupled formats of LowRankConv2d, the geometry module all four formats
share, and the orthogonality penalties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trp_kernels as tk
from trp_kernels.schemes import costs, factorization, geometry
from trp_kernels.rank_training.elrt import make_lowrank, orthogonality_penalty
from trp_kernels.models import resnet20
from trp_kernels.training.report import markdown, plot
from trp_kernels.ops.svd import reference_rank

from testing import devices

NEW = ["tucker2", "decoupled"]
ALL = ["channel", "spatial", "tucker2", "decoupled"]
# odd geometries: stride 2, padding 2, dilation 2, a 3x5 kernel, no bias, mixed pairs
ODD = [
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=(3, 5), padding=(1, 2), bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
]


def _conv_with(W, bias=None, **kwargs):
    conv = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2:], bias=bias is not None,
                     **kwargs).to(W.dtype)
    with torch.no_grad():
        conv.weight.copy_(W)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", NEW)
def test_full_rank_equals_the_dense_conv_in_float64(device, scheme):
    for spec in ODD:
        conv = nn.Conv2d(5, 7, **spec).to(device=device, dtype=torch.float64)
        layer = tk.LowRankConv2d.from_conv(conv, scheme=scheme)
        assert layer.rank == layer.full_rank
        x = torch.randn(2, 5, 13, 11, device=device, dtype=torch.float64)
        expected = conv(x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.full_weight(), conv.weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.to_convs()(x), expected, rtol=1e-12, atol=1e-12)
        assert (layer.bias is None) == (conv.bias is None)


def test_factor_mapping_of_tucker2():
    """U_in, U_out: leading singular vectors of the C and N mode unfoldings; the core is
    W x_N U_out^T x_C U_in^T; the layer's convs are U_in^T, the core, U_out."""
    W = torch.randn(8, 5, 3, 2, dtype=torch.float64)
    layer = tk.LowRankConv2d.from_conv(_conv_with(W), scheme="tucker2", rank=(3, 4))
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
    layer = tk.LowRankConv2d.from_conv(_conv_with(W), scheme="decoupled", rank=2)
    assert layer.rank == 2 and layer.full_rank == 6
    assert tuple(layer.weight1.shape) == (8, 6, 1, 1) and tuple(layer.weight2.shape) == (4, 2, 3, 3)
    for n in range(4):
        U, S, Vh = torch.linalg.svd(W[n].reshape(6, 9))
        for j in range(2):
            branch = torch.outer(layer.weight1[n * 2 + j, :, 0, 0], layer.weight2[n, j].reshape(9))
            torch.testing.assert_close(branch, S[j] * torch.outer(U[:, j], Vh[j]))
    first, second = layer.to_convs()
    assert (first.kernel_size, first.groups) == ((1, 1), 1) and second.groups == 4


@pytest.mark.parametrize("kwargs", [{"energy": 0.7}, {"threshold": 0.2}, {"rank": 3},
                                    {"energy": 0.95, "rank": 4}])
def test_rank_rules_per_mode_and_per_filter(kwargs):
    conv = nn.Conv2d(6, 9, 3).double()
    W = conv.weight.detach()
    rule = {("max_rank" if k == "rank" else k): v for k, v in kwargs.items()}
    tucker = tk.LowRankConv2d.from_conv(conv, scheme="tucker2", **kwargs)
    S_in = torch.linalg.svdvals(W.transpose(0, 1).reshape(6, -1))
    S_out = torch.linalg.svdvals(W.reshape(9, -1))
    assert tucker.rank == (int(reference_rank(S_in, **rule)), int(reference_rank(S_out, **rule)))
    decoupled = tk.LowRankConv2d.from_conv(conv, scheme="decoupled", **kwargs)
    per_filter = reference_rank(torch.linalg.svdvals(W.reshape(9, 6, 9)), **rule)
    assert decoupled.rank == int(per_filter.max())
    # filters whose own rank is lower keep only their own components
    for n in range(9):
        r = int(per_filter[n])
        err = torch.linalg.norm((decoupled.full_weight().detach() - W)[n])
        assert abs(float(err) - float(torch.linalg.norm(torch.linalg.svdvals(W[n].reshape(6, 9))[r:]))) < 1e-10


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
    layer = tk.LowRankConv2d.from_conv(_conv_with(W[0]), "tucker2", rank=(4, 5), hooi_iterations=3)
    torch.testing.assert_close(layer.full_weight(), factorization.full_weight(*hooi[0], "tucker2"))


@pytest.mark.parametrize("scheme", NEW)
def test_gradcheck(scheme):
    layer = tk.LowRankConv2d(3, 4, (3, 2), rank=2, stride=2, padding=1, dilation=(1, 2),
                             scheme=scheme, dtype=torch.float64)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    names = layer.geometry.factor_names + ("bias",)

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    params = tuple(getattr(layer, n).detach().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("scheme", NEW)
def test_fresh_layer_and_repr(scheme):
    layer = tk.LowRankConv2d(6, 12, (3, 5), rank=2 if scheme == "decoupled" else (3, 5),
                             stride=2, padding=(1, 2), scheme=scheme)
    dense = layer.full_weight().detach()
    if scheme == "tucker2":
        assert layer.rank == (3, 5) and "rank=(3, 5)/(6, 12)" in repr(layer)
        assert int(torch.linalg.matrix_rank(dense.transpose(0, 1).reshape(6, -1))) == 3
        assert int(torch.linalg.matrix_rank(dense.reshape(12, -1))) == 5
    else:
        assert layer.rank == 2 and "rank=2/6" in repr(layer)
        assert (torch.linalg.matrix_rank(dense.reshape(12, 6, 15)) == 2).all()
    assert f"scheme='{scheme}'" in repr(layer)
    y = layer(torch.randn(2, 6, 9, 9))
    assert y.shape == (2, 12, 5, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert isinstance(tk.LowRankConv2d(4, 6, 3, rank=1, scheme=scheme).rank, (int, tuple))


@pytest.mark.parametrize("scheme", NEW)
def test_rank_zero_is_the_bias(scheme):
    layer = tk.LowRankConv2d(3, 5, 3, rank=0, stride=2, padding=1, scheme=scheme)
    assert not layer.full_weight().any() and orthogonality_penalty(layer).item() == 0.0
    y = layer(torch.randn(2, 3, 8, 7))
    assert y.shape == (2, 5, 4, 4)
    torch.testing.assert_close(y, layer.bias.view(1, 5, 1, 1).expand_as(y))


@pytest.mark.parametrize("scheme", NEW)
def test_state_dict_with_other_ranks_resizes(scheme):
    small, large = ((1, 3), (4, 2)) if scheme == "tucker2" else (1, 3)
    source = nn.Sequential(tk.LowRankConv2d(4, 8, 3, rank=small, padding=1, scheme=scheme),
                           tk.LowRankConv2d(8, 8, 3, rank=large, padding=1, scheme=scheme))
    target = nn.Sequential(tk.LowRankConv2d(4, 8, 3, rank=large, padding=1, scheme=scheme),
                           tk.LowRankConv2d(8, 8, 3, rank=0, padding=1, scheme=scheme))
    target.load_state_dict(source.state_dict())
    assert [target[0].rank, target[1].rank] == [small, large]
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(target(x), source(x))
    bad = source.state_dict()
    name = "0." + source[0].geometry.factor_names[0]
    bad[name] = torch.randn(bad[name].shape[0], 3, 1, 1)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(bad)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(2, 3), scheme="channel")
    with pytest.raises(TypeError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(1, 2, 3), scheme="tucker2")
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(5, 2), scheme="tucker2")      # r_in above C
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=(2, 7), scheme="tucker2")      # r_out above N
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d(4, 6, 3, rank=5, scheme="decoupled")         # above min(C, kh*kw)
    with pytest.raises(ValueError, match="scheme"):
        tk.LowRankConv2d(4, 6, 3, rank=2, scheme="cp")
    with pytest.raises(ValueError, match="groups"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3, groups=2), scheme="tucker2")
    with pytest.raises(ValueError, match="rank"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3), scheme="tucker2", rank=(9, 2))
    with pytest.raises(ValueError, match="hooi_iterations"):
        tk.LowRankConv2d.from_conv(nn.Conv2d(4, 6, 3), scheme="channel", hooi_iterations=2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match="rank"):
        tk.decompose_model(model, "spatial", rank=(2, 2))
    with pytest.raises(ValueError, match="rank"):
        tk.decompose_model(model, "tucker2", rank=(0.5, 1.5))
    with pytest.raises(ValueError, match="kind"):
        orthogonality_penalty(model, kind="hard")
    with pytest.raises(ValueError, match="to_convs"):
        tk.LowRankConv2d(4, 6, 3, rank=2, scheme="tucker2").to_conv_pair()


# -- geometry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("view", [geometry.OUT_MODE, geometry.IN_MODE, geometry.SPATIAL,
                                  geometry.PER_FILTER])
def test_matrix_views_round_trip_batched(view):
    W = torch.randn(2, 3, 7, 5, 3, 2, dtype=torch.float64)
    M = view.to_matrix(W)
    assert tuple(M.shape) == (2, 3, *view.shape(W.shape))
    torch.testing.assert_close(view.to_weight(M, W.shape[-4:]), W, rtol=0, atol=0)
    torch.testing.assert_close(view.to_matrix(W[1, 2]), M[1, 2], rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ALL)
def test_thin_convs_sizes_macs_and_params(scheme):
    """The geometry's per-conv sizes, MACs and parameters are those of the plain convs."""
    s = geometry.scheme(scheme)
    rank = (2, 3) if scheme == "tucker2" else 2
    layer = tk.LowRankConv2d(4, 6, (3, 5), rank=rank, stride=(2, 1), padding=(2, 1),
                             dilation=(1, 2), scheme=scheme)
    x = torch.randn(1, 4, 11, 13)
    macs, hw = 0, (11, 13)
    for thin, conv in zip(layer.thin_convs(), layer.to_convs()):
        x = conv(x)
        step, hw = thin.macs(hw)
        assert hw == tuple(x.shape[-2:])
        macs += step
    assert hw == tuple(layer(torch.randn(1, 4, 11, 13)).shape[-2:])
    assert (macs, hw) == s.macs(layer.weight_shape, rank, (11, 13), layer.stride,
                                layer.padding, layer.dilation) == costs.lowrank_macs(layer, (11, 13))
    assert s.params(layer.weight_shape, rank, bias=True) == costs.count_params(layer)
    assert [tuple(f.shape) for f in layer.factors] == list(s.factor_shapes(layer.weight_shape, rank))


def test_macs_of_the_design():
    tucker = tk.LowRankConv2d(8, 16, 3, rank=(3, 5), stride=2, padding=1, scheme="tucker2")
    macs, out = costs.lowrank_macs(tucker, (32, 30))
    assert out == (16, 15)
    assert macs == 3 * 8 * 32 * 30 + (5 * 3 * 9 + 16 * 5) * 16 * 15
    decoupled = tk.LowRankConv2d(8, 16, 3, rank=2, stride=2, padding=1, scheme="decoupled")
    macs, out = costs.lowrank_macs(decoupled, (32, 30))
    assert macs == 2 * 16 * 8 * 32 * 30 + 2 * 16 * 9 * 16 * 15


# -- low-rank training ----------------------------------------------------------------------------
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


@pytest.mark.parametrize("scheme", ALL)
def test_orthogonality_penalty_values(scheme):
    rank = (3, 4) if scheme == "tucker2" else 3
    layer = tk.LowRankConv2d(5, 6, 3, rank=rank, scheme=scheme, dtype=torch.float64)
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


@pytest.mark.parametrize("scheme", NEW)
def test_make_lowrank_trains_factors_only(scheme):
    torch.manual_seed(3)
    model = resnet20(in_channels=1)
    fresh = model.layer2[1].conv1.weight.detach().clone()
    rank = (0.25, 0.5) if scheme == "tucker2" else 0.5
    report = make_lowrank(model, scheme, rank=rank)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, tk.LowRankConv2d)}
    assert len(report.layers) == 18 and type(model.conv1) is nn.Conv2d
    assert set(layers) == {entry.name for entry in report.layers if not entry.kept_dense}
    # decoupled runs its 1x1 conv at the input resolution: on the two stride-2 convs that costs
    # more than the conv itself, so they stay dense (the dense fallback of decompose_model)
    dense = {"layer2.0.conv1", "layer3.0.conv1"} if scheme == "decoupled" else set()
    assert {entry.name for entry in report.layers if entry.kept_dense} == dense
    for entry in report.layers:
        if scheme == "tucker2":
            assert entry.rank == (math.ceil(0.25 * entry.full_rank[0]),
                                  math.ceil(0.5 * entry.full_rank[1]))
        else:
            assert entry.rank == math.ceil(0.5 * entry.full_rank)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith(".weight") and n.rsplit(".", 1)[0] in layers for n in names)
    # spectral initialisation: the factorisation of the fresh dense weight at that rank
    layer = model.layer2[1].conv1
    expected = factorization.decompose_weight(fresh, scheme, rank=layer.rank)
    torch.testing.assert_close(layer.full_weight(), factorization.full_weight(*expected, scheme))
    orthogonality_penalty(model).backward()
    penalised = [layer.weight_in, layer.weight_out] if scheme == "tucker2" else layer.factors
    assert all(p.grad is not None for p in penalised)


def test_decompose_model_report_and_plot(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.ReLU(), nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 12, 12)
    reference = model(x)
    report = tk.decompose_model(model, "tucker2", example_input=x)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    assert [l.rank for l in report.layers] == [(3, 8), (8, 8), (8, 8)]
    assert "3,8/3,8" in str(report) and report.flops_speedup is not None
    rows = [{"name": l.name, "weight_shape": list(l.weight_shape), "rank": list(l.rank),
             "full_rank": list(l.full_rank), "macs": l.macs_after, "dense_macs": l.macs_before,
             "params": l.params_after, "dense_params": l.params_before} for l in report.layers]
    summary = {"method": "decomp", "scheme": "tucker2", "test_accuracy": 0.5,
               "dense_test_accuracy": 0.6, "conv_macs": report.conv_macs_after,
               "dense_conv_macs": report.conv_macs_before, "params": 1, "dense_params": 2,
               "latency_batch": 2, "device": "cpu", "latency_ms": 1.0, "dense_latency_ms": 1.0,
               "flops_speedup": report.flops_speedup, "layers": rows}
    assert "| 3,8 / 3,8 |" in markdown(summary)
    plot(summary, str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0
