"""TRPRegularizer's own mechanics: the period and cost of its hooks, half precision, its state,
weights that move after construction, an energy that changes between steps, the shared rank of
decoupled layers, decomposing only its layers, and arguments that name themselves."""

import pytest
import torch
from torch import nn

from small_models import small_resnet
from trp_kernels.ops.svd import reference_lowrank_project
from trp_kernels.rank_training.trp import TRPRegularizer
from trp_kernels.schemes.factorization import weight_to_matrix
from trp_kernels.schemes.layers import LowRankConv2d


def matrices(trp):
    return {name: weight_to_matrix(conv.weight.detach(), trp.scheme).clone()
            for name, conv in trp.layers}


def reference(M, energy):
    return reference_lowrank_project(M.double(), energy=energy)


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
