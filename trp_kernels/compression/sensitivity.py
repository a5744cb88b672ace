"""Ranks chosen by accuracy (``decompose_model(select="accuracy")``; docs/compression.md,
"Ranks chosen by accuracy"): the way compression tools that have labelled data choose them, a
per-layer sensitivity sweep and a greedy allocation of the FLOP budget.

1. Sweep: on the calibration data, each layer alone is factorised at a few ranks of its
   budget chain (budget.py: the cheapest rank, and the smallest rank keeping each energy of
   ``SWEEP_ENERGIES``), every other layer dense, and the model's top-1 accuracy and mean
   cross-entropy are measured, its BatchNorm layers normalising by the data's own statistics
   as after BatchNorm adaptation (batchnorm.py), which the compressed model will get. The results are cached on disk (``cache_dir``), keyed by the
   model's weights, the data and the ranks, so a second budget on the same model and data
   costs no sweep.
2. Estimate: the loss increase of every rank of a layer's chain, interpolated linearly in kept
   energy between the swept ranks (the dense layer: no increase). The cross-entropy, not the
   top-1: on a few hundred images the top-1 moves in steps and is flat where a trained model
   fits its calibration images, while the loss moves smoothly; the report shows both.
3. Allocate: the per-layer losses are taken as additive. From the dense model, the step of
   the smallest loss increase per MAC saved is taken, over the lower convex hull of each
   layer's (MACs saved, loss) points, until the budget is met; then, while MACs remain in the
   budget, the layer whose move to a larger rank lowers the estimate most and still fits is
   moved.
4. Check: the chosen ranks and the energy plan (``plan_budget``'s leximin-energy ranks for the
   same budget) are both measured whole on the calibration data, and the one with the lower
   loss is kept (``AccuracyChoice.kept``), so that the selection by accuracy is never worse on
   the data it was given than the selection by energy.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from . import accuracy
from .budget import BudgetPlan
from .files import atomic_write_text

# The sweep's ranks of a layer: its cheapest, and the smallest keeping each of these energies.
SWEEP_ENERGIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
SELECTIONS = ("energy", "accuracy")
# Part of every cache key: a sweep measured another way is another sweep.
SWEEP_FORMAT = "trp_kernels sensitivity/1: one layer factorised, BatchNorm by batch statistics"


def cache_dir() -> str:
    """Where sweeps are cached: $TRP_KERNELS_CACHE, else $XDG_CACHE_HOME/trp_kernels, else
    ~/.cache/trp_kernels."""
    if os.environ.get("TRP_KERNELS_CACHE"):
        return os.environ["TRP_KERNELS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trp_kernels")


@dataclass(frozen=True)
class SweepPoint:
    rank: object          # an int, a pair for tucker2
    energy: float         # of the layer's spectral energy, kept at this rank (budget.py)
    top1: float           # the model's, with this layer alone at this rank
    loss: float


@dataclass
class Sensitivity:
    """The sweep: the dense model's figures and, per layer, its swept points."""
    dense: accuracy.Accuracy
    layers: dict[str, list[SweepPoint]] = field(default_factory=dict)
    cache_file: str | None = None     # where it was read from or written to
    cached: bool = False              # read from the cache, not measured now


@dataclass
class AccuracyChoice:
    plan: BudgetPlan                  # the plan kept
    kept: str                         # "accuracy", or "energy" when that measured better
    sensitivity: Sensitivity
    loss: dict[str, float]            # calibration loss of the whole model, per plan
    top1: dict[str, float]            # calibration top-1 of the whole model, per plan


def swept_indices(chain) -> list[int]:
    """Indices into a layer's candidate chain (the dense candidate last) of the ranks swept."""
    factorised = len(chain) - 1
    if factorised < 1:
        return []
    chosen = {0}
    for level in SWEEP_ENERGIES:
        chosen.add(next((i for i in range(factorised) if chain[i].energy >= level),
                        factorised - 1))
    return sorted(chosen)


def _digest(model: nn.Module, batches, layers: dict) -> str:
    """A key for a sweep: the model's weights and buffers, the data, the swept ranks."""
    h = hashlib.sha256(f"{SWEEP_FORMAT} {__version__}".encode())
    h.update(json.dumps(layers, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for x, y in batches:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def sweep(model: nn.Module, plan: BudgetPlan, targets, schemes, batches,
          progress: bool | None = None) -> Sensitivity:
    """Each layer of ``targets`` ((name, module) pairs of ``model``, in ``schemes``) alone at its
    swept ranks (``swept_indices`` of ``plan.candidates``), measured on ``batches``; read from
    the cache when this model, data and ranks were swept before."""
    swept = {name: [plan.candidates[name][i] for i in swept_indices(plan.candidates[name])]
             for name, _ in targets}
    ranks = {name: [c.rank for c in points] for name, points in swept.items()}
    path = os.path.join(cache_dir(), f"sensitivity-{_digest(model, batches, ranks)}.json")
    cached = _read(path)
    if cached is not None:
        return Sensitivity(accuracy.Accuracy(**cached["dense"]),
                           {name: [SweepPoint(_rank(p["rank"]), p["energy"], p["top1"],
                                              p["loss"]) for p in points]
                            for name, points in cached["layers"].items()}, path, True)
    result = Sensitivity(accuracy.measure(model, batches, batch_statistics=True),
                         cache_file=path)
    total = sum(len(points) for points in swept.values())
    with tqdm(total=total, desc="sensitivity sweep", unit=" evaluations", leave=False,
              disable=None if progress is None else not progress) as bar:
        for (name, module), s in zip(targets, schemes):
            result.layers[name] = []
            for candidate in swept[name]:
                model.set_submodule(name, plan.layer_at(name, module, s, candidate.rank))
                measured = accuracy.measure(model, batches, batch_statistics=True)
                result.layers[name].append(SweepPoint(candidate.rank, candidate.energy,
                                                      measured.top1, measured.loss))
                bar.update(1)
            model.set_submodule(name, module)
    _write(path, result)
    return result


def _rank(value):
    return tuple(value) if isinstance(value, list) else value


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(path: str, result: Sensitivity) -> None:
    """Caches the sweep; a cache that cannot be written is no error, only a later sweep."""
    record = {"dense": vars(result.dense),
              "layers": {name: [vars(p) for p in points]
                         for name, points in result.layers.items()}}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(json.dumps(record), path)
    except OSError:
        result.cache_file = None


def estimated_losses(chain, points: list[SweepPoint], dense_loss: float) -> list[float]:
    """The loss increase at every candidate of ``chain`` (the dense one last: 0), linear in
    kept energy between the swept ``points`` (whose ranks are in the chain)."""
    known = sorted({p.energy: p.loss - dense_loss for p in points}.items()) + [(1.0, 0.0)]
    out = []
    for candidate in chain[:-1]:
        e = candidate.energy
        upper = next(i for i, (level, _) in enumerate(known) if level >= e or i == len(known) - 1)
        if upper == 0 or known[upper][0] == e:
            out.append(known[upper][1])
            continue
        (e0, l0), (e1, l1) = known[upper - 1], known[upper]
        out.append(l0 + (l1 - l0) * (e - e0) / (e1 - e0))
    return out + [0.0]


def _lower_hull(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """The lower convex hull of (MACs saved, loss increase, index) points sorted by savings."""
    hull: list = []
    for p in points:
        while len(hull) >= 2:
            (x0, y0, _), (x1, y1, _) = hull[-2], hull[-1]
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def allocate(plan: BudgetPlan, losses: dict[str, list[float]]) -> dict[str, int]:
    """Per layer, the index into its candidate chain that the greedy of the module docstring
    chooses, by ``losses`` (per layer, the estimated loss increase of each candidate of its
    chain), with the model's MACs at most those of the energy ``plan`` for the same budget: the
    two selections are then compared at no more FLOPs for the one by accuracy."""
    chains = plan.candidates
    budget = plan.conv_macs_after
    current = {name: len(chain) - 1 for name, chain in chains.items()}     # all dense
    total = plan.conv_macs_before
    hulls, heap = {}, []
    for i, (name, chain) in enumerate(chains.items()):
        dense = chain[-1].macs
        points = [(dense - chain[j].macs, losses[name][j], j) for j in reversed(range(len(chain)))]
        hulls[name] = _lower_hull(points)
        if len(hulls[name]) > 1:
            heapq.heappush(heap, (_slope(hulls[name], 0), i, name, 0))
    while total > budget and heap:
        _, i, name, k = heapq.heappop(heap)
        hull = hulls[name]
        total -= hull[k + 1][0] - hull[k][0]
        current[name] = hull[k + 1][2]
        if k + 2 < len(hull):
            heapq.heappush(heap, (_slope(hull, k + 1), i, name, k + 1))
    while True:      # spend what the last step left of the budget
        best = None
        for name, chain in chains.items():
            j = current[name]
            for up in range(j + 1, len(chain)):
                gain = losses[name][j] - losses[name][up]
                if total + chain[up].macs - chain[j].macs <= budget and gain > 0 \
                        and (best is None or gain > best[0]):
                    best = (gain, name, up)
        if best is None:
            return current
        _, name, up = best
        total += chains[name][up].macs - chains[name][current[name]].macs
        current[name] = up


def _slope(hull, k: int) -> float:
    (x0, y0, _), (x1, y1, _) = hull[k], hull[k + 1]
    return (y1 - y0) / (x1 - x0)


def plan_by_accuracy(model: nn.Module, plan: BudgetPlan, targets, schemes, batches,
                     progress: bool | None = None) -> AccuracyChoice:
    """The ranks for ``plan``'s budget (made by ``plan_budget`` for ``targets``) chosen by
    accuracy on ``batches`` of labelled calibration data (module docstring); ``model`` holds
    the dense layers and is left as it was."""
    sensitivity = sweep(model, plan, targets, schemes, batches, progress)
    losses = {name: estimated_losses(plan.candidates[name], sensitivity.layers[name],
                                     sensitivity.dense.loss) for name, _ in targets}
    chosen = plan.with_choice(allocate(plan, losses))
    loss, top1 = {}, {}
    for label, candidate in (("energy", plan), ("accuracy", chosen)):
        for (name, module), s in zip(targets, schemes):
            layer = candidate.layer(name, module, s)
            if layer is not None:
                model.set_submodule(name, layer)
        measured = accuracy.measure(model, batches, batch_statistics=True)
        loss[label], top1[label] = measured.loss, measured.top1
        for name, module in targets:
            model.set_submodule(name, module)
    kept = "accuracy" if loss["accuracy"] <= loss["energy"] else "energy"
    return AccuracyChoice(chosen if kept == "accuracy" else plan, kept, sensitivity, loss, top1)
