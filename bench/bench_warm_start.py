"""TRPRegularizer.project() during TRP+Nu training of ResNet-20, warm-started against cold
(docs/svd_paths.md, "Warm start"); and the projection of the ResNet-18/50 layer sets one step
after a projection (test_project_layer_set, at the end).

case: resnet20-channel, resnet20-spatial (ResNet-20 on CIFAR-sized input, the scheme of TRP).
impl:
  warm   TRPRegularizer(..., warm_start=True), the default: each projection starts from the
         bases of the previous one
  cold   TRPRegularizer(..., warm_start=False): every projection from scratch

The matrices: a reference TRP+Nu run (period 1, energy 0.9, lambda 3e-4; SGD lr 0.1, momentum
0.9, weight decay 1e-4; one batch of 128 random 32x32 images with fixed random labels) records
its layers' weights before every projection. Each benchmark round is one training step of the
impl's own run: untimed, the forward and backward pass, the nuclear sub-gradient and the SGD
step, after which the decomposable layers are given the reference run's weights of that step;
timed, project() on them, as TRPRegularizer.before_forward runs it. So both impls project the
same matrices, the warm one from the bases of its projection one step earlier, in the state a
training step leaves the machine in. ``extra_info`` records each round's layer ranks
(bench/summarize.py compares them between the impls) and the CPU kernel's warm-start outcomes
(torch.ops.trp.warm_start_counts: accepted, bad start, no gap, not certified, power steps).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from trp_kernels.models import resnet20
from trp_kernels.ops.svd import lowrank_project_groups
from trp_kernels.rank_training.trp import TRPRegularizer

from conftest import QUICK

SCHEMES = ("channel", "spatial")
IMPLS = ("warm", "cold")
BATCH = 128
WARMUP = 3     # rounds before the timed ones: the first projection is cold in both impls
ROUNDS = 3 if QUICK else 30


class TrainingRun:
    """ResNet-20 under TRP+Nu, one training step per call of ``step``."""

    def __init__(self, scheme: str, warm: bool):
        torch.manual_seed(0)
        self.model = resnet20()
        self.trp = TRPRegularizer(self.model, scheme, energy=0.9, nuclear_weight=3e-4,
                                  warm_start=warm)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                         weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(BATCH, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (BATCH,), generator=g)

    def weights(self) -> list[torch.Tensor]:
        return [layer.weight for _, layer in self.trp.layers]

    def step(self) -> None:
        """What follows a projection in a training step (the sub-gradient is that of the
        projection's SVD)."""
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad()
        loss.backward()
        self.trp.after_backward()
        self.optimizer.step()


@functools.lru_cache(maxsize=None)
def reference_weights(scheme: str) -> list[list[torch.Tensor]]:
    """The decomposable layers' weights before each projection of the reference run."""
    run = TrainingRun(scheme, warm=False)
    out = []
    for _ in range(WARMUP + ROUNDS + 1):
        out.append([w.detach().clone() for w in run.weights()])
        run.trp.project()
        run.step()
    return out


class Rounds:
    """The setup of each benchmark round (pytest-benchmark's ``setup``) and what it saw."""

    def __init__(self, run: TrainingRun, reference: list[list[torch.Tensor]]):
        self.run, self.reference = run, reference
        self.round = 0
        self.ranks: list[list[int]] = []

    def setup(self):
        if self.round > 0:
            self.ranks.append(list(self.run.trp.ranks().values()))
            self.run.step()
        with torch.no_grad():
            torch._foreach_copy_(self.run.weights(), self.reference[self.round])
        self.round += 1
        return (), {}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_project_in_training(benchmark, scheme, impl):
    rounds = Rounds(TrainingRun(scheme, warm=impl == "warm"), reference_weights(scheme))
    benchmark.group = f"resnet20-{scheme}@cpu"
    torch.ops.trp.warm_start_counts(True)
    benchmark.pedantic(rounds.run.trp.project, setup=rounds.setup, rounds=ROUNDS,
                       warmup_rounds=WARMUP, iterations=1)
    rounds.ranks.append(list(rounds.run.trp.ranks().values()))
    benchmark.extra_info["ranks"] = rounds.ranks
    benchmark.extra_info["warm_start_counts"] = torch.ops.trp.warm_start_counts(True)


# -- the ResNet-18/50 layer sets -------------------------------------------------------------
# lowrank_project_groups on every decomposable conv of the network (bench/layer_sets.json, the
# layers of one shape stacked, weights random as layer_sets.weights draws them), one training
# step after a projection: the projection's W_low moved by 2e-3 of its norm, warm from that
# projection's bases against cold. Random weights keep about 75% of k at energy 0.9, past the
# largest block the CPU warm solver takes above k = 64 (0.35 k): the case where a warm start must
# cost next to nothing when it cannot help. extra_info as above, the ranks per group.
LAYER_SETS = ("resnet18", "resnet50")
SET_ROUNDS = 1 if QUICK else 5


@functools.lru_cache(maxsize=None)
def layer_set_one_step_later(network: str, scheme: str):
    from gpu_timings import one_step_later
    from layer_sets import groups, weights

    first = groups(weights(network, scheme))
    lows, _, _, bases = lowrank_project_groups(first, energy=0.9, check_finite=False,
                                               return_basis=True)
    return [one_step_later(low, seed=i) for i, low in enumerate(lows)], bases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("network", LAYER_SETS)
def test_project_layer_set(benchmark, network, scheme, impl):
    stacked, bases = layer_set_one_step_later(network, scheme)
    warm = {"basis": bases} if impl == "warm" else {}
    ranks = []

    def project():
        ranks.append([r.tolist() for r in lowrank_project_groups(
            stacked, energy=0.9, check_finite=False, **warm)[2]])
    benchmark.group = f"{network}-{scheme}-set@cpu"
    torch.ops.trp.warm_start_counts(True)
    benchmark.pedantic(project, rounds=SET_ROUNDS, warmup_rounds=0 if QUICK else 1,
                       iterations=1)
    benchmark.extra_info["ranks"] = ranks
    benchmark.extra_info["warm_start_counts"] = torch.ops.trp.warm_start_counts(True)
