"""Compression judged and chosen on labelled data: top-1 and loss against float64 references,
BatchNorm adaptation, decompose_model's eval_data, and the ranks chosen by accuracy
(select="accuracy": the sweep, its cache, the allocation against a brute force, the check
against the energy plan)."""

from __future__ import annotations

import copy
import itertools
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trp_kernels as tk
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from trp_kernels.compression import accuracy, sensitivity
from trp_kernels.compression.batchnorm import adapt_batchnorm
from trp_kernels.compression.budget import BudgetPlan, Candidate


class Net(nn.Module):
    """Two decomposable convs with BatchNorm after each, a linear head."""
    never_decomposed = ()

    def __init__(self, classes=4):
        super().__init__()
        self.a = nn.Conv2d(2, 12, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 12, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, classes)

    def features(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        return torch.relu(self.bn_b(self.b(x))).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def labelled(n=96, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 2, 6, 6, generator=g) + y.view(-1, 1, 1, 1)
    return x, y


def fitted_net(seed=0):
    """A Net whose BatchNorm statistics are those of ``labelled()`` and whose head is the least
    squares fit of the classes on its features, so that its ranks matter. No autograd: a
    backward pass would start torch's autograd engine before the emulated CUDA device of the
    tests in tests/ops is registered, and the engine then knows no such device."""
    torch.manual_seed(seed)
    model = Net().eval()
    x, y = labelled()
    adapt_batchnorm(model, [(x, y)])
    with torch.no_grad():
        features = model.features(x).double()
        design = torch.cat([features, torch.ones(len(y), 1, dtype=torch.float64)], 1)
        solution = torch.linalg.lstsq(design, F.one_hot(y, 4).double()).solution
        model.head.weight.copy_(solution[:-1].T)
        model.head.bias.copy_(solution[-1])
    return model


def test_top1_and_loss_against_a_float64_reference():
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(300, 5, dtype=torch.float64), torch.randint(0, 3, (300,))
    result = accuracy.measure(model, accuracy.labelled_batches((x, y)))   # 2 batches of 256
    with torch.no_grad():
        logits = model(x)
    top1 = float((logits.argmax(1) == y).double().mean())
    loss = float(-(logits.log_softmax(1)[torch.arange(300), y]).mean())
    assert result.samples == 300 and result.top1 == pytest.approx(top1, abs=1e-12)
    assert result.loss == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("data, error, match", [
    ((torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64)), ValueError,
     "eval_data has 3 inputs but 4 labels"),
    ((torch.zeros(3, 2), torch.zeros(3)), ValueError, "eval_data: labels must be int64 [B]"),
    (5, TypeError, "eval_data must be a pair (inputs, labels) of tensors or an iterable"),
    ([], ValueError, "eval_data holds no samples"),
    ([torch.zeros(2)], TypeError, "eval_data must give (inputs, labels) pairs of tensors"),
])
def test_bad_labelled_data(data, error, match):
    with pytest.raises(error, match=pytest.importorskip("re").escape(match)):
        accuracy.labelled_batches(data)


def test_batchnorm_adaptation_takes_the_datas_statistics():
    torch.manual_seed(0)
    model = Net().eval()
    x, y = labelled()
    with torch.no_grad():
        conv_out = model.a(x).double()            # what bn_a sees
    momentum = model.bn_a.momentum
    assert adapt_batchnorm(model, accuracy.labelled_batches((x, y))) == 2
    # a cumulative average over the batches (one batch here): the data's own mean and
    # unbiased variance, float64 reference
    torch.testing.assert_close(model.bn_a.running_mean.double(), conv_out.mean((0, 2, 3)),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn_a.running_var.double(),
                               conv_out.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert not model.training and not model.bn_a.training and model.bn_a.momentum == momentum
    assert adapt_batchnorm(nn.Sequential(nn.Conv2d(2, 3, 3)), [(x, y)]) == 0


def test_batch_statistics_measure_what_adaptation_gives_and_change_nothing():
    model = fitted_net()
    x, y = labelled(seed=1)
    before = copy.deepcopy(model.state_dict())
    by_batch = accuracy.measure(model, [(x, y)], batch_statistics=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    adapt_batchnorm(model, [(x, y)])
    adapted = accuracy.measure(model, [(x, y)])
    # one batch: its statistics are the adapted ones (the variance biased vs unbiased aside)
    assert by_batch.top1 == pytest.approx(adapted.top1, abs=2 / len(y))
    assert by_batch.loss == pytest.approx(adapted.loss, rel=0.05)


def test_eval_data_gives_the_dense_and_the_compressed_top1():
    model = fitted_net()
    dense = copy.deepcopy(model)
    x, y = labelled(seed=2)
    report = tk.decompose_model(model, "channel", rank=2, eval_data=(x, y),
                                example_input=x[:1])
    assert report.eval_samples == len(y)
    assert report.accuracy["dense"] == accuracy.measure(dense, [(x, y)]).top1
    assert report.accuracy["compressed"] == accuracy.measure(model, [(x, y)]).top1
    assert report.to_dict()["accuracy"] == report.accuracy
    assert "top-1 on 96 eval_data samples: dense" in str(report)
    assert report.batchnorm_adapted == 0           # no calibration_data: statistics kept


def test_calibration_data_adapts_the_batchnorm_statistics():
    model = fitted_net()
    x, y = labelled(seed=3)
    report = tk.decompose_model(model, "channel", rank=2, calibration_data=(x, y))
    assert report.batchnorm_adapted == 2
    reference = copy.deepcopy(model)
    adapt_batchnorm(reference, [(x, y)])
    torch.testing.assert_close(model.bn_b.running_mean, reference.bn_b.running_mean)


@pytest.mark.parametrize("kwargs, match", [
    ({"select": "speed"}, "select must be one of energy, accuracy, got 'speed'"),
    ({"select": "accuracy", "calibration_data": labelled()},
     "select='accuracy' chooses the ranks of a FLOP budget: give target_speedup"),
    ({"select": "accuracy", "target_speedup": 2},
     "select='accuracy' needs calibration_data"),
])
def test_bad_selection(kwargs, match):
    x, _ = labelled()
    with pytest.raises(ValueError, match=match):
        tk.decompose_model(Net(), "channel", example_input=x[:1], **kwargs)


def test_estimated_losses_interpolate_in_energy():
    chain = [Candidate(1, 10, 0.5), Candidate(2, 20, 0.7), Candidate(3, 30, 0.8),
             Candidate(None, 40, 1.0)]
    points = [sensitivity.SweepPoint(1, 0.5, 0.1, 1.5), sensitivity.SweepPoint(3, 0.8, 0.9, 0.3)]
    losses = sensitivity.estimated_losses(chain, points, dense_loss=0.1)
    assert losses == pytest.approx([1.4, 1.4 + (0.2 - 1.4) * (0.2 / 0.3), 0.2, 0.0])


def plan_of(chains: dict, others: int = 0, target: float = 2.0) -> BudgetPlan:
    """A BudgetPlan over made-up candidate chains (each ending with its dense candidate)
    whose energy choice is the cheapest candidate meeting ``target`` layer by layer."""
    before = others + sum(chain[-1].macs for chain in chains.values())
    ranks = {}
    for name, chain in chains.items():
        ranks[name] = next(c.rank for c in chain if c.macs * target >= chain[-1].macs)
    after = others + sum(next(c.macs for c in chain if c.rank == ranks[name])
                         for name, chain in chains.items())
    return BudgetPlan(ranks, {}, before, after, 0.9, 10.0, chains, {})


def test_the_allocation_finds_the_least_estimated_loss_of_a_brute_force():
    """Three layers with convex loss curves: the greedy over the hulls, then the spending of
    what is left, reaches the brute-force optimum of the additive estimate within the energy
    plan's MACs."""
    chains, losses = {}, {}
    for name, (step, scale) in {"a": (10, 1.0), "b": (7, 3.0), "c": (13, 0.5)}.items():
        chain = [Candidate(r, step * r, r / 6) for r in range(1, 6)] + [Candidate(None, step * 6, 1)]
        chains[name] = chain
        losses[name] = [scale * (6 - r) ** 2 for r in range(1, 6)] + [0.0]
    plan = plan_of(chains)
    chosen = sensitivity.allocate(plan, losses)
    macs = sum(chains[n][j].macs for n, j in chosen.items())
    assert macs <= plan.conv_macs_after
    best = min((sum(losses[n][j] for n, j in zip(chains, combo)), combo)
               for combo in itertools.product(*(range(len(c)) for c in chains.values()))
               if sum(chains[n][j].macs for n, j in zip(chains, combo)) <= plan.conv_macs_after)
    assert sum(losses[n][j] for n, j in chosen.items()) == best[0]


def test_ranks_by_accuracy_never_lose_to_the_energy_plan_on_the_calibration_data(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TRP_KERNELS_CACHE", str(tmp_path / "cache"))
    model, calibration = fitted_net(), labelled(seed=4)
    energy_model = copy.deepcopy(model)
    x = calibration[0][:1]
    by_energy = tk.decompose_model(energy_model, "channel", target_speedup=2, example_input=x,
                                   calibration_data=calibration)
    report = tk.decompose_model(model, "channel", target_speedup=2, example_input=x,
                                select="accuracy", calibration_data=calibration)
    selection = report.selection
    assert report.select == "accuracy" and selection["samples"] == len(calibration[1])
    assert selection["loss"][selection["kept"]] <= selection["loss"]["energy"]
    assert report.conv_macs_after <= by_energy.conv_macs_after and report.flops_speedup >= 2
    # the energy plan's figure is the model decomposed by energy, its BatchNorm adapted (to
    # the biased against the unbiased variance of 96 samples)
    assert selection["loss"]["energy"] == pytest.approx(
        accuracy.measure(energy_model, [calibration]).loss, rel=2e-2)
    for layer in report.layers:
        points = layer.sensitivity
        assert points and all(set(p) == {"rank", "energy", "top1", "loss"} for p in points)
        assert [p["energy"] for p in points] == sorted(p["energy"] for p in points)
    assert selection["cache_file"].startswith(str(tmp_path / "cache"))
    with open(selection["cache_file"]) as f:
        assert set(json.load(f)["layers"]) == {"a", "b"}


def test_the_sweep_is_read_back_from_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRP_KERNELS_CACHE", str(tmp_path))
    calibration = labelled(seed=5)
    calls = []
    measure = accuracy.measure
    monkeypatch.setattr(accuracy, "measure", lambda *a, **k: calls.append(1) or measure(*a, **k))

    def run(model):
        return tk.decompose_model(model, "channel", target_speedup=2,
                                  example_input=calibration[0][:1], select="accuracy",
                                  calibration_data=calibration)
    first = run(fitted_net())
    swept = len(calls)
    second = run(fitted_net())
    assert not first.selection["cached"] and second.selection["cached"]
    assert len(calls) - swept < swept / 2          # no sweep: the two plans' checks alone
    assert [l.sensitivity for l in first.layers] == [l.sensitivity for l in second.layers]
    assert [l.rank for l in first.layers] == [l.rank for l in second.layers]
    other = fitted_net(seed=1)                  # other weights: another sweep
    assert not run(other).selection["cached"]
    assert len(os.listdir(tmp_path)) == 2


def test_the_report_gives_the_top1_before_the_batchnorm_adaptation():
    model = fitted_net()
    unadapted = copy.deepcopy(model)
    x, y = labelled(seed=6)
    report = tk.decompose_model(model, "channel", rank=2, calibration_data=labelled(seed=7),
                                eval_data=(x, y))
    tk.decompose_model(unadapted, "channel", rank=2)
    assert report.unadapted_accuracy == accuracy.measure(unadapted, [(x, y)]).top1
    assert "BatchNorm layers were re-estimated" in str(report)
