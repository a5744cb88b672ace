"""TRP on the tensor formats: Tucker-2 (both mode unfoldings) and network decoupling (per-filter
matrices at one rank per layer), held to float64 LAPACK references."""

import pytest
import torch
from test_trp import ops_per_step, small_resnet
from testing import devices

from trp_kernels.schemes import geometry
from trp_kernels.schemes.layers import LowRankConv2d
from trp_kernels.models import resnet56
from trp_kernels.ops.svd import reference_lowrank_project, reference_rank
from trp_kernels.rank_training.trp import TRPRegularizer

FORMATS = ["tucker2", "decoupled"]


def weights(trp):
    return {name: conv.weight.detach().double().clone() for name, conv in trp.layers}


def mode_projection(W, view, energy):
    """(U_r U_r^T, U_r V_r^T folded back, r) of one unfolding of W, in float64."""
    M = view.to_matrix(W)
    ref = reference_lowrank_project(M, energy=energy)
    U = torch.linalg.svd(M, full_matrices=False)[0][:, :int(ref.rank)]
    return U @ U.T, view.to_weight(ref.subgrad, W.shape), int(ref.rank)


def tucker2_reference(W, energy):
    """W x_N P_out x_C P_in, the summed sub-gradient, (r_in, r_out)."""
    P_out, sub_out, r_out = mode_projection(W, geometry.OUT_MODE, energy)
    P_in, sub_in, r_in = mode_projection(W, geometry.IN_MODE, energy)
    low = torch.einsum("no,ocij,cp->npij", P_out, W, P_in)
    return low, sub_out + sub_in, (r_in, r_out)


def decoupled_reference(W, energy):
    """Every filter at the layer's shared rank (the largest filter energy rank)."""
    M = geometry.PER_FILTER.to_matrix(W)                        # [N, C, kh*kw]
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    r = int(reference_rank(S, energy=energy).max())
    low = (U[..., :r] * S[:, None, :r]) @ Vh[:, :r]
    sub = U[..., :r] @ Vh[:, :r]
    return (geometry.PER_FILTER.to_weight(low, W.shape),
            geometry.PER_FILTER.to_weight(sub, W.shape), r)


REFERENCES = {"tucker2": tucker2_reference, "decoupled": decoupled_reference}


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", FORMATS)
def test_projection_and_subgradient_match_the_reference(device, scheme):
    torch.manual_seed(0)
    model = small_resnet(device)
    lam = 0.1
    trp = TRPRegularizer(model, scheme, energy=0.6, nuclear_weight=lam)
    before = weights(trp)
    trp.before_forward()
    for _, conv in trp.layers:
        conv.weight.grad = torch.ones_like(conv.weight)
    trp.after_backward()
    ranks = trp.ranks()
    for name, conv in trp.layers:
        low, sub, rank = REFERENCES[scheme](before[name], 0.6)
        assert ranks[name] == rank, name
        torch.testing.assert_close(conv.weight.double(), low, rtol=1e-4, atol=1e-5)
        # The sub-gradient is the SVD's of the weights before the projection (as on the
        # matrix schemes and in the official code).
        torch.testing.assert_close(conv.weight.grad.double(), 1 + lam * sub,
                                   rtol=1e-4, atol=1e-4)
    full = [geometry.scheme(scheme).full_rank(conv.weight.shape) for _, conv in trp.layers]
    assert any(r != f for r, f in zip(ranks.values(), full))   # energy 0.6 truncates


def test_decoupled_layers_share_the_largest_filter_rank():
    W = torch.zeros(3, 4, 3, 3, dtype=torch.float64)
    W[0, 0, 0, 0] = 1.0                                            # rank 1
    W[1, :2, :2, 0] = torch.eye(2, dtype=torch.float64)            # rank 2
    W[2, :3, 0, :3] = torch.diag(torch.tensor([3.0, 2.0, 1.0]))    # rank 3 at energy 1
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3, bias=False)).double()
    model[0].weight.data.copy_(W)
    trp = TRPRegularizer(model, "decoupled", energy=1.0, nuclear_weight=0.0, skip=())
    trp.project()
    assert trp.ranks() == {"0": 3}
    torch.testing.assert_close(model[0].weight.data, W)            # nothing above rank 3


@pytest.mark.parametrize("scheme", FORMATS)
def test_steps_cost_a_bounded_number_of_ops_whatever_the_depth(scheme):
    """Tucker-2: two batched project calls (one per mode) and a P_in product per shape group;
    decoupled: one call for the filter ranks, then one untruncated SVD and a few mask and bmm
    ops per shape group (the op's rank bound is one scalar, the shared rank is per layer)."""
    bound = {"tucker2": 40, "decoupled": 80}[scheme]
    model = small_resnet("cpu")
    (projecting,) = ops_per_step(model, scheme, period=1, steps=1)
    subgradient_only, _ = ops_per_step(model, scheme, period=2, steps=2)
    for ops in (projecting, subgradient_only):
        assert sum(ops.values()) <= bound, ops
    assert projecting["trp.lowrank_project_groups.default"] == (2 if scheme == "tucker2" else 1)
    deep = resnet56(in_channels=1, stage_strides=(1, 1, 2))
    (deep_projecting,) = ops_per_step(deep, scheme, period=1, steps=1)
    assert deep_projecting == projecting


@pytest.mark.parametrize("scheme", FORMATS)
def test_decompose_after_projection_is_exact(scheme):
    torch.manual_seed(1)
    model = small_resnet("cpu").double().eval()
    trp = TRPRegularizer(model, scheme, energy=0.7, nuclear_weight=0.0)
    trp.project()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        dense_out = model(x)
    # The projected weights have exactly the ranks of the projection (each Tucker-2 mode, each
    # decoupled filter at most the shared rank): a decomposition that drops only the zero
    # singular values reproduces them.
    report = trp.decompose(threshold=1e-8, example_input=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_out, rtol=1e-6, atol=1e-8)
    assert [tuple(l.rank) if isinstance(l.rank, (tuple, list)) else l.rank
            for l in report.layers] == list(trp.ranks().values())
    assert isinstance(model.layer1[0].conv1, LowRankConv2d)
    if scheme == "tucker2":
        assert report.flops_speedup > 1


@pytest.mark.parametrize("scheme", FORMATS)
def test_training_steps_with_the_new_formats(scheme):
    torch.manual_seed(0)
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, scheme, energy=0.5, nuclear_weight=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        trp.before_forward()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert trp.step == 3
