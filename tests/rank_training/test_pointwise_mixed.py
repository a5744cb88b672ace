"""TRP and ELRT on a model that mixes schemes (pointwise=True): k x k convs in their scheme,
1x1 convs and linear layers in pointwise. The matrix schemes share one batched call; tucker2 and
decoupled add the pointwise layers' own. Float64 references for every layer."""

import pytest
import torch

import trp_kernels as tk
from scheme_cases import CASES
from trp_kernels.compression import layer_scheme
from trp_kernels.models import mobilenetv2
from trp_kernels.rank_training.trp import TRPRegularizer
from trp_kernels.schemes.matrix_views import weight_as_conv
from training_steps import trp_steps

CASE = {case.name: case for case in CASES}
# lowrank_project_groups calls of one step: the matrix schemes share theirs
CALLS = {"channel": 1, "spatial": 1, "tucker2": 3, "decoupled": 2}


def small_mobilenet():
    torch.manual_seed(0)
    return mobilenetv2(in_channels=1, stage_strides=(1, 1, 2))


@pytest.mark.parametrize("scheme", sorted(CALLS))
def test_projection_of_every_layer_in_its_scheme(scheme, project_calls):
    """On a MobileNet whose stem is acted on too (skip only the classifier): the stem in
    ``scheme``, every 1x1 conv in pointwise; projected and sub-gradient as their references."""
    model = small_mobilenet()
    trp = TRPRegularizer(model, scheme, energy=0.7, nuclear_weight=0.1, pointwise=True,
                         skip=("fc",))
    before = {n: weight_as_conv(m.weight).detach().double().clone() for n, m in trp.layers}
    trp.before_forward()
    for _, layer in trp.layers:
        layer.weight.grad = torch.ones_like(layer.weight)
    trp.after_backward()
    assert len(project_calls) == CALLS[scheme]
    ranks = trp.ranks()
    assert ranks and layer_scheme(model.conv1, scheme) == scheme
    for name, layer in trp.layers:
        case = CASE[layer_scheme(layer, scheme)]
        low, subgrad, rank = case.trp_reference(before[name], 0.7)
        torch.testing.assert_close(weight_as_conv(layer.weight).double(), low, rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(weight_as_conv(layer.weight.grad).double(), 1 + 0.1 * subgrad,
                                   rtol=1e-4, atol=1e-4)
        assert ranks[name] == rank, name


def test_trp_trains_and_decomposes_a_mobilenet_with_its_classifier():
    """skip=("conv1",): the classifier (a linear layer) is trained and decomposed too."""
    model = small_mobilenet()
    trp = TRPRegularizer(model, "pointwise", energy=0.6, nuclear_weight=1e-3,
                         skip=("conv1",))
    assert trp.layers[-1][0] == "fc"
    trp_steps(model, trp, 2)
    trp.project()
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        dense_out = model(x)
    report = trp.decompose(threshold=1e-6, example_input=x[:1])
    assert isinstance(model.fc, tk.LowRankLinear)
    assert [l.rank for l in report.layers] == list(trp.ranks().values())
    assert report.flops_speedup > 1.5
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_out, rtol=1e-4, atol=1e-4)


def test_make_lowrank_with_a_budget():
    model = small_mobilenet()
    x = torch.randn(1, 1, 8, 8)
    report = tk.make_lowrank(model, "channel", rank=None, pointwise=True, target_speedup=2,
                             example_input=x)
    assert report.flops_speedup >= 2 and report.pointwise
    lowrank = [m for m in model.modules() if isinstance(m, tk.LowRankConv2d)]
    assert lowrank and all(m.scheme == "pointwise" for m in lowrank)
    assert type(model.fc) is torch.nn.Linear and type(model.conv1) is torch.nn.Conv2d
    assert tk.orthogonality_penalty(model).item() > 0


def test_nothing_to_act_on_names_the_layers():
    with pytest.raises(ValueError, match="1x1 conv or linear layer"):
        TRPRegularizer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "pointwise")
    with pytest.raises(TypeError, match="pointwise"):
        TRPRegularizer(small_mobilenet(), pointwise=1)
