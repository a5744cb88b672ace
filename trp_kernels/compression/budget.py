"""Choosing per-layer ranks: aligned ranks, the dense fallback, and FLOP budgets.

Every decomposable layer gets a chain of candidates, cheapest first: factorised forms at ranks
m, 2m, ... (``rank_multiple`` m, capped at the full rank) that cost fewer MACs than the dense
conv, then the dense conv itself. Each candidate knows its MACs per sample and the fraction of
the layer's spectral energy it keeps (sum of the kept s_i^2 over sum of all s_i^2; the dense
conv keeps 1). A factorised form that is not cheaper than the dense conv is never a candidate,
which is how a layer stays a plain nn.Conv2d.

FLOP budget (``target_speedup`` t): model conv MACs <= dense conv MACs / t. The criterion is
leximin on the per-layer kept energy: first the smallest kept energy over the layers is made as
large as the budget allows, then the second smallest, and so on. The greedy that computes it
repeatedly upgrades the layer that keeps the least energy to its next candidate if that fits the
budget, and otherwise freezes it; it ends when no layer's next candidate fits, so the speed-up
is >= t and as close to t as one more rank step of any layer allows.
Why this criterion and not "most energy per MAC" (a knapsack on normalised singular values):
TRP trains every layer towards one energy level e, and the first phase of the greedy (until the
first freeze) is exactly TRP's rule at one level (``BudgetPlan.energy_level``), so the trainer
can aim its projections at the budget; and maximising the total energy lets expensive layers
with flat spectra fall to a few ranks, a bottleneck that no accuracy recovers, while the
smallest kept energy is what bounds the damage to any one layer.

The energy of a candidate is the level e at which TRP's rank rule gives that rank: the kept
fraction of the scheme's one matrix (channel, spatial, pointwise), the smallest over the filters'
matrices (decoupled: one rank for all of them) or over the two mode unfoldings (tucker2).

Plug-in point for other schemes: ``CANDIDATES[scheme](conv, scheme, spectra, input_hw,
rank_multiple)`` (``spectra``: the singular values of each of the scheme's matrix views) returns
the factorised candidates of one layer as a chain (ascending MACs and energy). tucker2 returns
rank pairs along its own chain: both ranks at one per-mode energy level.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch
from torch import nn

from ..ops import checks
from ..schemes import geometry
from ..schemes.costs import conv_costs, dense_macs, factorised_macs
from ..schemes.factorization import full_rank, view_svds
from ..schemes.layer_kinds import conv_weight_shape, decompose_layers, lowrank_from_svd
from ..schemes.layers import explicit_padding
from .selection import counts_linear, layer_scheme, per_scheme


def round_rank(rank, full, multiple: int):
    """``rank`` rounded up to a multiple of ``multiple``, capped at ``full``; 0 (an all-zero
    weight) stays 0. A rank pair (tucker2's (r_in, r_out)) is rounded part by part."""
    if isinstance(rank, (tuple, list)):
        return tuple(round_rank(r, k, multiple) for r, k in zip(rank, full))
    return min(full, -(-rank // multiple) * multiple)


@dataclass(frozen=True)
class Candidate:
    rank: object          # an int, a pair for tucker2; None for the dense layer
    macs: int             # per sample
    energy: float         # fraction of the layer's spectral energy kept


def kept_levels(spectrum: torch.Tensor) -> torch.Tensor:
    """[k] float64: at each rank r, the smallest kept energy fraction over the matrices whose
    singular values ``spectrum`` [..., k] holds (1 for an all-zero matrix)."""
    squares = spectrum.double().square().reshape(-1, spectrum.shape[-1])
    totals = squares.sum(1, keepdim=True)
    kept = torch.where(totals > 0, torch.cumsum(squares, 1) / totals.clamp_min(1e-300), 1.0)
    return kept.min(0).values


def lowrank_candidates(conv, scheme, spectra, input_hw, rank_multiple) -> list[Candidate]:
    """Channel, spatial, decoupled and pointwise: ranks m, 2m, ... capped at the full rank,
    while cheaper than dense. Their MACs are linear in the rank, so one count at rank 1 serves
    all."""
    k = full_rank(conv_weight_shape(conv), scheme)
    per_rank = factorised_macs(conv, scheme, 1, input_hw)
    limit = dense_macs(conv, input_hw)
    kept = kept_levels(spectra[0])
    out = []
    for r in sorted({round_rank(j * rank_multiple, k, rank_multiple)
                     for j in range(1, -(-k // rank_multiple) + 1)}):
        if r * per_rank >= limit:
            break
        out.append(Candidate(r, r * per_rank, float(kept[r - 1])))
    return out


def tucker2_candidates(conv, scheme, spectra, input_hw, rank_multiple) -> list[Candidate]:
    """tucker2: (r_in, r_out) = each mode's rank by the energy rule at one level e, for every
    level at which either changes, rounded up to multiples of m, while cheaper than dense."""
    registered = geometry.scheme(scheme)
    kept = [kept_levels(s) for s in spectra]           # (r_in's mode, r_out's mode)
    fulls = tuple(len(k) for k in kept)
    limit = dense_macs(conv, input_hw)
    shape, padding = conv.weight.shape, explicit_padding(conv)
    out = []
    for level in torch.unique(torch.cat(kept)):        # ascending
        pair = round_rank(tuple(int(torch.searchsorted(k, level)) + 1 for k in kept), fulls,
                          rank_multiple)
        if out and pair == out[-1].rank:
            continue
        macs = registered.macs(shape, pair, input_hw, conv.stride, padding, conv.dilation)[0]
        if macs >= limit:
            break
        out.append(Candidate(pair, macs, float(min(k[r - 1] for k, r in zip(kept, pair)))))
    return out


CANDIDATES = {"channel": lowrank_candidates, "spatial": lowrank_candidates,
              "decoupled": lowrank_candidates, "tucker2": tucker2_candidates,
              "pointwise": lowrank_candidates}


def _layer_schemes(layers, scheme: str) -> list[str]:
    """Each layer's scheme (``selection.layer_scheme``); ValueError where it has no budget."""
    schemes = [layer_scheme(module, scheme) for _, module in layers]
    for s in dict.fromkeys(schemes):
        if s not in CANDIDATES:
            raise ValueError(f"target_speedup is not supported for scheme {s!r}")
    return schemes


@dataclass
class BudgetPlan:
    """Per-layer choice of a FLOP budget: ``ranks[name]`` is a rank, or None for dense."""
    ranks: dict[str, object]
    energy: dict[str, float]          # kept per layer
    conv_macs_before: int
    conv_macs_after: int
    energy_level: float               # TRP's energy e whose rule alone reaches the budget
    max_speedup: float                # every layer at its cheapest candidate
    candidates: dict[str, list[Candidate]] = field(repr=False, default_factory=dict)
    svds: dict[str, tuple] = field(repr=False, default_factory=dict)   # per layer, per view

    @property
    def flops_speedup(self) -> float:
        return self.conv_macs_before / self.conv_macs_after

    def layer(self, name: str, module: nn.Module, scheme: str):
        """The low-rank layer the plan gives ``module`` in its ``scheme`` (None: it stays
        dense)."""
        return self.layer_at(name, module, scheme, self.ranks[name])

    def layer_at(self, name: str, module: nn.Module, scheme: str, rank):
        """``module``'s low-rank layer in ``scheme`` at ``rank`` (None: None), built from the
        SVD already computed where the scheme has one matrix view."""
        if rank is None:
            return None
        if len(self.svds[name]) == 1:
            return lowrank_from_svd(module, scheme, self.svds[name][0], rank)
        return decompose_layers([module], scheme, ranks=[rank])[0]

    def with_choice(self, chosen: dict[str, int]) -> "BudgetPlan":
        """The plan with each layer at the candidate of index ``chosen[name]`` in its chain
        (the others as they are): ranks, energies and MACs follow."""
        ranks, energy = dict(self.ranks), dict(self.energy)
        after = self.conv_macs_after
        for name, index in chosen.items():
            old = next(c for c in self.candidates[name] if c.rank == ranks[name])
            new = self.candidates[name][index]
            ranks[name], energy[name] = new.rank, new.energy
            after += new.macs - old.macs
        return BudgetPlan(ranks, energy, self.conv_macs_before, after, self.energy_level,
                          self.max_speedup, self.candidates, self.svds)


def plan_budget(model: nn.Module, layers, scheme: str, example_input: torch.Tensor,
                target_speedup, rank_multiple: int = 1, pointwise: bool = False) -> BudgetPlan:
    """The leximin-energy ranks (module docstring) of ``layers`` ((name, layer) pairs of
    ``model``, each in its ``selection.layer_scheme``) for a conv FLOP speed-up of at least
    ``target_speedup`` on ``example_input``. Layers of the model outside ``layers`` count at
    their dense cost; linear layers count with ``pointwise`` or scheme "pointwise". Raises
    ValueError naming the largest reachable speed-up when the target is out of reach."""
    target = checks.target_speedup(target_speedup)
    rank_multiple = checks.rank_multiple(rank_multiple)
    schemes = _layer_schemes(layers, scheme)
    costs = {c.name: c for c in conv_costs(model, example_input,
                                           counts_linear(scheme, pointwise))}
    total_dense = sum(c.macs for c in costs.values())
    names = [name for name, _ in layers]
    svds = per_scheme(layers, schemes, view_svds)    # one call per scheme
    chains, current = {}, {}
    for (name, conv), s, views in zip(layers, schemes, svds):
        if name not in costs:
            raise ValueError(f"layer {name!r} does not run on example_input")
        hw = costs[name].input_hw
        spectra = tuple(S for _, S, _ in views)
        chains[name] = CANDIDATES[s](conv, s, spectra, hw, rank_multiple) \
            + [Candidate(None, costs[name].macs, 1.0)]
        current[name] = 0
    total = total_dense - sum(costs[n].macs for n in names) + sum(chains[n][0].macs for n in names)
    if total_dense / total < target:
        raise ValueError(
            f"target_speedup {target:g} cannot be reached: the largest reachable conv FLOP "
            f"speed-up is {total_dense / total:.4g}x (every decomposed layer at rank "
            f"{rank_multiple}, or dense where no rank is cheaper)")
    budget = total_dense / target
    heap = [(chains[n][0].energy, i, n) for i, n in enumerate(names) if len(chains[n]) > 1]
    heapq.heapify(heap)
    level = None
    while heap:
        energy, i, name = heapq.heappop(heap)
        chain, j = chains[name], current[name]
        step = chain[j + 1]
        if step.energy <= energy:
            continue   # nothing more to keep (an exactly low-rank weight)
        if total + step.macs - chain[j].macs > budget:
            if level is None:
                # any e above every layer's previous candidate and at most this layer's energy
                below = max((chains[n][current[n] - 1].energy for n in names if current[n]),
                            default=0.0)
                level = energy if below >= energy else (below + energy) / 2
            continue       # frozen: its next step never fits again, the budget only shrinks
        total += step.macs - chain[j].macs
        current[name] = j + 1
        if j + 2 < len(chain):
            heapq.heappush(heap, (step.energy, i, name))
    return BudgetPlan(
        ranks={n: chains[n][current[n]].rank for n in names},
        energy={n: chains[n][current[n]].energy for n in names},
        conv_macs_before=total_dense, conv_macs_after=total,
        energy_level=1.0 if level is None else level,
        max_speedup=total_dense / (total_dense - sum(costs[n].macs for n in names)
                                   + sum(chains[n][0].macs for n in names)),
        candidates=chains, svds=dict(zip(names, svds)))


def energy_for_budget(model, layers, scheme, example_input, target_speedup,
                      rank_multiple: int = 1, pointwise: bool = False) -> float:
    """The energy e for TRP's projections on the current weights whose rank rule (with
    ``rank_multiple`` and the dense fallback) meets the FLOP budget: for the trainer, e.g.
    re-chosen at each epoch boundary so that training aims at the budget."""
    return plan_budget(model, layers, scheme, example_input, target_speedup,
                       rank_multiple, pointwise).energy_level


def fraction_for_budget(model: nn.Module, layers, scheme: str, example_input: torch.Tensor,
                        target_speedup, rank_multiple: int = 1, pointwise: bool = False) -> float:
    """For low-rank training from scratch (``make_lowrank``): the largest common fraction f of
    each layer's full rank whose ranks (``geometry``'s ``layer_rank(f)``, rounded up to
    ``rank_multiple``, dense where no cheaper) give a conv FLOP speed-up of at least
    ``target_speedup``; so the speed-up is >= t and as close to it as one common fraction allows.
    Why one fraction and not ``plan_budget``'s leximin energy: a freshly initialised weight has
    a flat spectrum, so its kept energy only measures its rank fraction and the leximin ranks
    carry no information that a common fraction lacks. The speed-up falls as f grows, so the
    fraction is found by bisection over the fractions r/k at which some layer's rank changes.
    Raises ValueError naming the largest reachable speed-up when t is out of reach."""
    target = checks.target_speedup(target_speedup)
    rank_multiple = checks.rank_multiple(rank_multiple)
    schemes = _layer_schemes(layers, scheme)
    costs = {c.name: c for c in conv_costs(model, example_input,
                                           counts_linear(scheme, pointwise))}
    total_dense = sum(c.macs for c in costs.values())
    others = total_dense - sum(costs[name].macs for name, _ in layers)
    per_layer = []      # (its scheme, the layer, its input size, its dense MACs, weight shape)
    for (name, conv), s in zip(layers, schemes):
        if name not in costs:
            raise ValueError(f"layer {name!r} does not run on example_input")
        per_layer.append((geometry.scheme(s), conv, costs[name].input_hw, costs[name].macs,
                          conv_weight_shape(conv)))

    def speedup(fraction: float) -> float:
        total = others
        for registered, conv, hw, dense, shape in per_layer:
            r = round_rank(registered.layer_rank(fraction, shape), registered.full_rank(shape),
                           rank_multiple)
            total += min(factorised_macs(conv, registered.name, r, hw), dense)
        return total_dense / total

    fractions = sorted({r / k for registered, *_, shape in per_layer
                        for k in registered.rank_parts(registered.full_rank(shape))
                        for r in range(1, k + 1)} | {1.0})
    if speedup(fractions[0]) < target:
        raise ValueError(
            f"target_speedup {target:g} cannot be reached: the largest reachable conv FLOP "
            f"speed-up is {speedup(fractions[0]):.4g}x (every decomposed layer at rank "
            f"{rank_multiple}, or dense where no rank is cheaper)")
    low, high = 0, len(fractions)      # speedup(fractions[low]) >= t; high: past the last
    while high - low > 1:
        mid = (low + high) // 2
        if speedup(fractions[mid]) >= target:
            low = mid
        else:
            high = mid
    return fractions[low]
