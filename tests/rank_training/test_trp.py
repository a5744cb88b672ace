"""TRP in every scheme (one SchemeCase each, tests/scheme_cases.py), held to float64 LAPACK
references: the projection and the nuclear sub-gradient (matrix schemes: the energy truncation of
the one matrix view; tucker2 both mode unfoldings; decoupled per-filter matrices at one rank per
layer), the batched calls and bounded cost of a step, exact decomposition after a projection,
and training steps. The regularizer's own mechanics are in test_trp_hooks.py."""

import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scheme_cases import every_scheme, rank_of
from small_models import small_resnet
from testing import devices
from training_steps import trp_steps
from trp_kernels.models import resnet56
from trp_kernels.rank_training.trp import TRPRegularizer
from trp_kernels.schemes.layers import LowRankConv2d


def weights(trp):
    return {name: conv.weight.detach().double().clone() for name, conv in trp.layers}


@every_scheme
@pytest.mark.parametrize("device", devices)
def test_projection_is_the_energy_truncation(case, device, project_calls):
    model = case.adapt(small_resnet(device))
    trp = TRPRegularizer(model, case.name, energy=0.6, nuclear_weight=0.0)
    before = weights(trp)
    trp.before_forward()
    ranks = trp.ranks()
    scheme = case.scheme
    for name, conv in trp.layers:
        low, _, rank = case.trp_reference(before[name], 0.6)
        torch.testing.assert_close(conv.weight.double(), low, rtol=1e-4, atol=1e-5)
        assert ranks[name] == rank, name
        full = scheme.full_rank(conv.weight.shape)
        assert all(r < f for r, f in zip(scheme.rank_parts(rank), scheme.rank_parts(full)))
    # One op call per matrix view for the whole model, one stacked group per matrix shape
    # (ResNet-20 at 16/32/64 channels has five weight shapes).
    assert len(project_calls) == case.project_calls
    shapes = {view.shape(conv.weight.shape) for view in scheme.views for _, conv in trp.layers}
    assert {c[1:] for groups in project_calls for c in groups} == shapes
    for groups in project_calls:
        assert len(groups) == 5 and sum(c[0] for c in groups) == len(before) == 18


@every_scheme
@pytest.mark.parametrize("device", devices)
def test_nuclear_subgradient_is_added_every_step(case, device):
    """grad += lambda * the sub-gradient from the SVD of the step's weights before any
    projection: on a projection step that SVD's U_r V_r^T is also the nuclear sub-gradient at
    the projected weights, so it is not recomputed."""
    model = case.adapt(small_resnet(device))
    lam = 0.1
    trp = TRPRegularizer(model, case.name, energy=0.8, nuclear_weight=lam, period=3)
    for step in range(4):
        current = weights(trp)
        trp.before_forward()               # projects at steps 0 and 3 only
        for _, conv in trp.layers:
            conv.weight.grad = torch.ones_like(conv.weight)
        trp.after_backward()
        for name, conv in trp.layers:
            _, subgrad, _ = case.trp_reference(current[name], 0.8)
            torch.testing.assert_close(conv.weight.grad.double(), 1 + lam * subgrad,
                                       rtol=1e-4, atol=1e-4)
        # Perturb the weights as an optimizer step would, so off-steps see new matrices.
        with torch.no_grad():
            for _, conv in trp.layers:
                conv.weight.add_(0.01 * torch.randn_like(conv.weight))
    assert trp.step == 4


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


@every_scheme
def test_a_step_is_a_handful_of_tensor_ops_whatever_the_depth(case):
    """A TRP+Nu step dispatches a fixed handful of ops, not a few per layer: the groups are
    built once, and gathering, projecting and writing back are one batched op each (tucker2:
    per mode; decoupled: the filter ranks in one call, then one untruncated SVD and a few mask
    and bmm ops per shape group, since the op's rank bound is one scalar and the shared rank
    is per layer)."""
    model = case.adapt(small_resnet("cpu"))
    # period 1: every step projects (and adds the sub-gradient from the same SVD).
    (projecting,) = ops_per_step(model, case.name, period=1, steps=1)
    # period 2: the step after a projection step (step 1) only adds a fresh sub-gradient.
    subgradient_only, _ = ops_per_step(model, case.name, period=2, steps=2)
    for ops in (projecting, subgradient_only):
        assert sum(ops.values()) <= case.ops_per_step, ops
        assert ops["trp.lowrank_project_groups.default"] == case.project_calls, ops
    assert sum(projecting.values()) > sum(subgradient_only.values())
    # The count does not grow with the depth: ResNet-56 (54 layers) costs what ResNet-20 does.
    deep = case.adapt(resnet56(in_channels=1, stage_strides=(1, 1, 2)))
    (deep_projecting,) = ops_per_step(deep, case.name, period=1, steps=1)
    assert deep_projecting == projecting


@every_scheme
def test_decompose_after_projection_is_exact(case):
    torch.manual_seed(1)
    model = case.adapt(small_resnet("cpu")).double().eval()
    trp = TRPRegularizer(model, case.name, energy=0.7, nuclear_weight=0.0)
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
    assert [rank_of(l.rank) for l in report.layers] == list(trp.ranks().values())
    assert isinstance(model.layer1[0].conv1, LowRankConv2d)


@every_scheme
def test_training_steps_keep_the_weights_low_rank(case):
    torch.manual_seed(0)
    model = case.adapt(small_resnet("cpu"))
    trp = TRPRegularizer(model, case.name, energy=0.5, nuclear_weight=1e-3)
    assert all(math.isfinite(loss) for loss in trp_steps(model, trp, 3))
    assert trp.step == 3
    trp.before_forward()
    scheme = case.scheme
    for name, conv in trp.layers:
        for view, rank in zip(scheme.views, scheme.rank_parts(trp.ranks()[name])):
            s = torch.linalg.svdvals(view.to_matrix(conv.weight.detach().double()))
            assert int((s > 1e-5 * s[..., :1]).sum(-1).max()) == rank, name
