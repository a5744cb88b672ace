"""Fidelity in every decomposition report: each layer's energy kept (against float64 LAPACK
singular values, in every scheme), the model's output error and top-1 agreement against the
dense model on a calibration batch, the warning below the documented agreement, and the text
report's layout."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from scheme_cases import every_scheme
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from small_models import SmallNet
from torch import nn

import trp_kernels as tk
from trp_kernels.compression import fidelity
from trp_kernels.schemes.matrix_views import PER_FILTER


def reference_energy(W: torch.Tensor, scheme, rank) -> float:
    """Kept squared singular values over all of them, in float64: of the scheme's matrix, or
    summed over the filters for decoupled."""
    W = W.double()
    if scheme.name == "decoupled":
        S = torch.linalg.svdvals(PER_FILTER.to_matrix(W))
    else:
        S = torch.linalg.svdvals(scheme.views[0].to_matrix(W))[None]
    return float(S[:, :rank].square().sum() / S.square().sum())


@every_scheme
def test_energy_kept_per_layer(case):
    torch.manual_seed(0)
    model = case.adapt(SmallNet()).eval()
    report = tk.decompose_model(model, case.name, rank=case.fraction, layers=["body.5"])
    (entry,) = report.layers
    assert not entry.kept_dense and 0 < entry.energy_kept < 1
    torch.manual_seed(0)
    W = case.adapt(SmallNet()).body[5].weight.detach().double()   # the same weight, dense
    if case.scheme.paired_rank:
        # tucker2: the energy its orthogonal projections keep, ||G||^2 / ||W||^2
        core = model.body[5].core.detach().double()
        assert entry.energy_kept == pytest.approx(float(core.square().sum() / W.square().sum()),
                                                  rel=1e-5)
    else:
        assert entry.energy_kept == pytest.approx(reference_energy(W, case.scheme, entry.rank),
                                                  rel=1e-5)


@every_scheme
def test_an_exact_decomposition_keeps_all_energy_and_the_outputs(case):
    torch.manual_seed(0)
    model = case.adapt(SmallNet()).eval()
    with torch.no_grad():
        weight, _ = case.low_rank_weight(model.body[5].weight.shape)
        model.body[5].weight.copy_(weight)
    x = torch.randn(8, 3, 16, 16)
    report = tk.decompose_model(model, case.name, threshold=1e-4, layers=["body.5"],
                                calibration_input=x)
    assert report.layers[0].energy_kept == pytest.approx(1.0, abs=1e-6)
    assert report.output_error < 1e-5 and report.top1_agreement == 1.0
    assert report.fidelity_samples == 8


def test_layers_kept_dense_keep_all_their_energy():
    report = tk.decompose_model(SmallNet(), "channel", layers=["body.0"])   # full rank: dense
    assert report.layers[0].kept_dense and report.layers[0].energy_kept == 1.0


def test_a_budget_reports_the_energy_it_planned():
    from trp_kernels.compression import budget, decomposable_layers

    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(1, 3, 16, 16)
    plan = budget.plan_budget(model, decomposable_layers(model), "channel", x, 1.5)
    report = tk.decompose_model(model, "channel", target_speedup=1.5, example_input=x)
    for entry in report.layers:
        assert entry.energy_kept == pytest.approx(plan.energy[entry.name], rel=1e-5)


def classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3),
                         nn.ReLU(), nn.Conv2d(32, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def test_a_damaged_classifier_warns_once_with_the_figures():
    model, x = classifier(), torch.randn(64, 3, 12, 12)
    with pytest.warns(fidelity.FidelityWarning, match=r"top-1 class on only [\d.]+% of 64 inputs"):
        report = tk.decompose_model(model, "channel", rank=1, skip=(), calibration_input=x)
    assert report.top1_agreement < fidelity.AGREEMENT_WARNING
    assert 0.1 < report.output_error
    text = str(report)
    assert "relative error" in text and text.count("warning:") == 1
    assert report.to_dict()["top1_agreement"] == report.top1_agreement


def test_a_faithful_classifier_does_not_warn():
    model, x = classifier(), torch.randn(64, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fidelity.FidelityWarning)
        report = tk.decompose_model(model, "channel", energy=0.9999, skip=(), calibration_input=x)
    assert report.top1_agreement >= fidelity.AGREEMENT_WARNING
    assert "warning:" not in str(report)


def test_outputs_other_than_class_scores():
    """A feature map has no top-1 class; a tuple of outputs is compared as one vector."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            y = self.a(x)
            return y, {"features": self.b(y)}

    torch.manual_seed(0)
    model, x = TwoHeads().eval(), torch.randn(2, 3, 9, 9)
    dense = copy.deepcopy(model)
    report = tk.decompose_model(model, "channel", rank=2, skip=(), calibration_input=x)
    assert report.top1_agreement is None
    with torch.no_grad():
        (ya, yb), (da, db) = model(x), dense(x)
    expected = torch.cat([(ya - da).flatten(), (yb["features"] - db["features"]).flatten()])
    reference = torch.cat([da.flatten(), db["features"].flatten()])
    assert report.output_error == pytest.approx(float(expected.norm() / reference.norm()),
                                                rel=1e-4)


def test_no_input_no_fidelity_and_a_tidy_table():
    model = nn.Sequential()
    model.add_module("a_layer_with_a_rather_long_name", nn.Conv2d(3, 8, 3))
    model.add_module("b", nn.Conv2d(8, 8, 3))
    report = tk.decompose_model(model, "channel", rank=2, skip=())
    assert report.output_error is None and "relative error" not in str(report)
    header, *rows = str(report).splitlines()[:3]
    assert "-->-" not in str(report)
    # the weight column ends where its header does, after the longest name
    end = header.index("weight") + len("weight")
    assert header.index("weight") > len("a_layer_with_a_rather_long_name")
    for row, shape in zip(rows, ("8x3x3x3", "8x8x3x3")):
        assert row.index(shape) + len(shape) == end


def test_calibration_input_must_be_a_tensor():
    with pytest.raises(TypeError, match="calibration_input"):
        tk.decompose_model(classifier(), rank=2, calibration_input=[1, 2])
