from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from testing import devices
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import trp_kernels.ops.svd as svd_module
from trp_kernels.schemes.factorization import matrix_to_weight, weight_to_matrix
from trp_kernels.schemes.layers import LowRankConv2d
from trp_kernels.models import resnet20, resnet56
from trp_kernels.ops.svd import reference_lowrank_project
from trp_kernels.rank_training.trp import TRPRegularizer
from trp_kernels.schemes import geometry
from trp_kernels.schemes.matrix_views import MatrixView

SCHEMES = ["channel", "spatial"]


def small_resnet(device):
    return resnet20(in_channels=1, stage_strides=(1, 1, 2)).to(device)


def matrices(trp):
    return {name: weight_to_matrix(conv.weight.detach(), trp.scheme).clone()
            for name, conv in trp.layers}


def reference(M, energy):
    return reference_lowrank_project(M.double(), energy=energy)


@pytest.fixture
def project_calls(monkeypatch):
    """The group shapes of every batched ``lowrank_project_groups`` call made through
    project_matrices: one list of shapes per op call."""
    calls = []
    real = svd_module.lowrank_project_groups

    def counting(groups, *args, **kwargs):
        groups = list(groups)
        calls.append([tuple(g.shape) for g in groups])
        return real(groups, *args, **kwargs)

    monkeypatch.setattr(svd_module, "lowrank_project_groups", counting)
    return calls


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_projection_is_the_energy_truncation(device, scheme, project_calls):
    model = small_resnet(device)
    trp = TRPRegularizer(model, scheme, energy=0.6, nuclear_weight=0.0)
    before = matrices(trp)
    trp.before_forward()
    after = matrices(trp)
    for name, M in before.items():
        expected = reference(M, 0.6)
        torch.testing.assert_close(after[name].double(), expected.W_low, rtol=1e-4, atol=1e-5)
        assert trp.ranks()[name] == int(expected.rank)
        assert int(expected.rank) < min(M.shape)
    # One op call for the whole model, one stacked group per matrix shape (ResNet-20 at
    # 16/32/64 channels has five).
    distinct = {tuple(M.shape) for M in before.values()}
    assert len(project_calls) == 1
    groups = project_calls[0]
    assert len(groups) == len(distinct) == 5
    assert sorted(c[1:] for c in groups) == sorted(distinct)
    assert sum(c[0] for c in groups) == len(before) == 18


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_nuclear_subgradient_is_added_every_step(device, scheme):
    """grad += lambda U_r V_r^T from the SVD of the step's weights before any projection: on a
    projection step that SVD's U_r V_r^T is also the nuclear sub-gradient at the projected
    (exactly rank-r) weights, so it is not recomputed."""
    model = small_resnet(device)
    lam = 0.1
    trp = TRPRegularizer(model, scheme, energy=0.8, nuclear_weight=lam, period=3)
    for step in range(4):
        current = matrices(trp)
        trp.before_forward()               # projects at steps 0 and 3 only
        for _, conv in trp.layers:
            conv.weight.grad = torch.ones_like(conv.weight)
        trp.after_backward()
        for name, conv in trp.layers:
            subgrad = reference(current[name], 0.8).subgrad
            expected = 1 + lam * matrix_to_weight(subgrad, conv.weight.shape, scheme)
            torch.testing.assert_close(conv.weight.grad.double(), expected, rtol=1e-4, atol=1e-4)
        # Perturb the weights as an optimizer step would, so off-steps see new matrices.
        with torch.no_grad():
            for _, conv in trp.layers:
                conv.weight.add_(0.01 * torch.randn_like(conv.weight))
    assert trp.step == 4


def test_period_and_cost_of_the_hooks(project_calls):
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "channel", nuclear_weight=0.0, period=4)
    for step in range(9):
        trp.before_forward()
        trp.after_backward()
    assert [len(c) for c in project_calls] == [5] * 3  # steps 0, 4 and 8; five shapes each
    project_calls.clear()
    plus_nu = TRPRegularizer(model, "channel", nuclear_weight=1e-3, period=4)
    for _, conv in plus_nu.layers:
        conv.weight.grad = torch.zeros_like(conv.weight)
    for step in range(4):
        plus_nu.before_forward()
        plus_nu.after_backward()
    assert [len(c) for c in project_calls] == [5] * 4  # one SVD per step, projection or not


def test_training_steps_keep_the_weights_low_rank():
    torch.manual_seed(0)
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "channel", energy=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        trp.before_forward()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()
        optimizer.step()
    trp.before_forward()
    for name, M in matrices(trp).items():
        s = torch.linalg.svdvals(M.double())
        assert int((s > 1e-5 * s[0]).sum()) == trp.ranks()[name]


def test_decompose_after_projection_is_exact_and_only_touches_its_layers():
    model = small_resnet("cpu").eval()
    trp = TRPRegularizer(model, "spatial", energy=0.7, skip=("conv1", "layer3.2.conv2"))
    trp.project()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        dense_out = model(x)
    report = trp.decompose(threshold=1e-4, example_input=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_out, rtol=1e-3, atol=1e-4)
    assert [l.name for l in report.layers] == [name for name, _ in trp.layers]
    assert [l.rank for l in report.layers] == list(trp.ranks().values())
    assert type(model.conv1) is nn.Conv2d and type(model.layer3[2].conv2) is nn.Conv2d
    assert isinstance(model.layer1[0].conv1, LowRankConv2d)
    assert report.flops_speedup > 1


def assert_bfloat16_projected_in_float32(trp):
    """A projection at energy 0.5 of bfloat16 weights: the float32 reference's ranks, and the
    weights stay bfloat16."""
    reference_ranks = {name: int(reference(M.float(), 0.5).rank)
                       for name, M in matrices(trp).items()}
    trp.project()
    assert trp.ranks() == reference_ranks
    assert all(conv.weight.dtype == torch.bfloat16 for _, conv in trp.layers)


def test_half_precision_weights_are_projected_in_float32():
    model = small_resnet("cpu").to(torch.bfloat16)
    trp = TRPRegularizer(model, "channel", energy=0.5)
    assert_bfloat16_projected_in_float32(trp)


def test_state_dict_round_trip():
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, period=2)
    for _ in range(3):
        trp.after_backward()
    other = TRPRegularizer(model, period=2)
    other.load_state_dict(trp.state_dict())
    assert other.step == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"energy": 0.0}, "energy"), ({"energy": 1.5}, "energy"), ({"energy": "0.9"}, "energy"),
    ({"nuclear_weight": -1e-4}, "nuclear_weight"),
    ({"nuclear_weight": float("nan")}, "nuclear_weight"),
    ({"period": 0}, "period"), ({"period": 1.5}, "period"),
    ({"scheme": "rows"}, "scheme"), ({"skip": ("nope",)}, "skip"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TRPRegularizer(small_resnet("cpu"), **kwargs)


def test_a_model_without_decomposable_convs_is_rejected():
    with pytest.raises(ValueError, match="no decomposable conv"):
        TRPRegularizer(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten()))


class DispatchedOps(TorchDispatchMode):
    """Counts the tensor ops that reach the dispatcher (each one a kernel launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(model, scheme, period, steps):
    """The dispatched ops of each of ``steps`` TRP+Nu steps (both hooks), after a first step."""
    trp = TRPRegularizer(model, scheme, nuclear_weight=3e-4, period=period)
    for _, conv in trp.layers:
        conv.weight.grad = torch.zeros_like(conv.weight)
    trp.before_forward()
    trp.after_backward()
    counts = []
    for _ in range(steps):
        with DispatchedOps() as mode:
            trp.before_forward()
            trp.after_backward()
        counts.append(mode.ops)
    return counts


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_step_is_a_handful_of_tensor_ops(scheme):
    """A TRP+Nu step dispatches a fixed handful of ops, not a few per layer: the groups are
    built once, and gathering, projecting and writing back are one batched op each."""
    model = small_resnet("cpu")
    # period 1: every step projects (and adds the sub-gradient from the same SVD).
    (projecting,) = ops_per_step(model, scheme, period=1, steps=1)
    # period 2: the step after a projection step (step 1) only adds a fresh sub-gradient.
    subgradient_only, _ = ops_per_step(model, scheme, period=2, steps=2)
    for ops in (projecting, subgradient_only):
        assert sum(ops.values()) <= 40, ops
        assert ops["trp.lowrank_project_groups.default"] == 1, ops
    assert sum(projecting.values()) > sum(subgradient_only.values())
    # The count does not grow with the depth: ResNet-56 (54 layers) costs what ResNet-20 does.
    deep = resnet56(in_channels=1, stage_strides=(1, 1, 2))
    (deep_projecting,) = ops_per_step(deep, scheme, period=1, steps=1)
    assert deep_projecting == projecting


def test_weights_moved_after_construction_are_followed():
    """model.to(dtype) after the regularizer was built: the next step regroups the weights."""
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "spatial", energy=0.5)
    model.to(torch.bfloat16)
    assert_bfloat16_projected_in_float32(trp)


def test_energy_may_change_between_steps():
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "channel", energy=0.9, nuclear_weight=0.0)
    trp.energy = 0.5
    before = matrices(trp)
    trp.project()
    assert trp.ranks() == {name: int(reference(M, 0.5).rank) for name, M in before.items()}
    with pytest.raises(ValueError, match="energy"):
        trp.energy = 1.5
    assert trp.energy == 0.5


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (8, 16, 3, 1), (5, 3, 1, 7), (1, 4, 2, 3)])
def test_a_weight_lies_over_its_matrix_as_a_strided_view(scheme, shape):
    (view,) = geometry.scheme(scheme).views
    matrix_shape, strides, offset = view.layout(shape)
    M = torch.randn(matrix_shape, dtype=torch.float64)
    weight = M.as_strided(shape, strides, offset)
    assert weight.data_ptr() == M.data_ptr()            # a view, no copy
    torch.testing.assert_close(weight, matrix_to_weight(M, shape, scheme), rtol=0, atol=0)
    torch.testing.assert_close(weight_to_matrix(weight, scheme), M, rtol=0, atol=0)


class TruncatingView(MatrixView):
    """Keeps two elements of each filter: not a reshape or permutation of the weight."""

    def to_matrix(self, W):
        return W.flatten(-3)[..., :2]


def test_a_view_that_is_not_a_permutation_is_refused():
    with pytest.raises(ValueError, match="not a reshape or permutation"):
        TruncatingView("truncating").layout((4, 3, 3, 3))
