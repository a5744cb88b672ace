"""decompose_model: replace the decomposable convs of a model (with ``pointwise``, its 1x1 convs
and linear layers too) by low-rank layers (LowRankConv2d, LowRankLinear)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..ops import checks
from ..schemes import geometry
from ..schemes.costs import conv_costs, count_params, is_cheaper
from ..schemes.layer_kinds import (LOWRANK_LAYERS, conv_weight_shape, decompose_layers,
                                   lowrank_from_svd)
from . import budget, latency
from .selection import counts_linear, decomposable_layers, layer_scheme


@dataclass
class LayerDecomposition:
    name: str
    weight_shape: tuple[int, int, int, int]
    rank: int | tuple[int, int]          # (r_in, r_out) for tucker2
    full_rank: int | tuple[int, int]
    params_before: int
    params_after: int
    macs_before: int | None = None   # per sample; None without an example input
    macs_after: int | None = None
    kept_dense: bool = False          # stayed a plain nn.Conv2d (rank: the form it refused)
    latency_dense: float | None = None        # seconds per batch on its input, when measured
    latency_factorised: float | None = None
    scheme: str | None = None         # the layer's own: "pointwise" for 1x1 convs and linears


@dataclass
class DecompositionReport:
    scheme: str
    layers: list[LayerDecomposition] = field(default_factory=list)
    conv_macs_before: int | None = None   # every conv of the model, per sample
    conv_macs_after: int | None = None
    measure: str | None = None            # the runtime of the latencies
    latency_before: float | None = None   # seconds per batch of example_input, when measured
    latency_after: float | None = None
    energy_level: float | None = None     # with target_speedup: TRP's energy reaching it
    pointwise: bool = False               # 1x1 convs and linear layers acted on (and counted)

    @property
    def latency_speedup(self) -> float | None:
        if not self.latency_before or not self.latency_after:
            return None
        return self.latency_before / self.latency_after

    @property
    def params_before(self) -> int:
        return sum(l.params_before for l in self.layers)

    @property
    def params_after(self) -> int:
        return sum(l.params_after for l in self.layers)

    @property
    def flops_speedup(self) -> float | None:
        """Conv MACs of the model before / after (the TRP papers' "speed-up")."""
        if not self.conv_macs_before or not self.conv_macs_after:
            return None
        return self.conv_macs_before / self.conv_macs_after

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "layers": [asdict(l) for l in self.layers],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "conv_macs_before": self.conv_macs_before,
            "conv_macs_after": self.conv_macs_after,
            "flops_speedup": self.flops_speedup,
            "measure": self.measure,
            "latency_before": self.latency_before,
            "latency_after": self.latency_after,
            "latency_speedup": self.latency_speedup,
            "energy_level": self.energy_level,
            "pointwise": self.pointwise,
        }

    def __str__(self) -> str:
        def mega(v):
            return "-" if v is None else f"{v / 1e6:.3f}"

        lines = [f"{'layer':<28} {'weight':>18} {'rank':>9} {'params':>15} {'MMACs':>17}"]
        for l in self.layers:
            shape = "x".join(map(str, l.weight_shape))
            rank, full = geometry.format_rank(l.rank), geometry.format_rank(l.full_rank)
            lines.append(
                f"{l.name:<28} {shape:>18} {rank:>4}/{full:<4} "
                f"{l.params_before:>7}->{l.params_after:<7} "
                f"{mega(l.macs_before):>8}->{mega(l.macs_after):<8}"
                + (" dense" if l.kept_dense else "")
            )
        lines.append(f"decomposed layers: {len(self.layers)}, scheme {self.scheme}, params "
                     f"{self.params_before} -> {self.params_after}")
        if self.flops_speedup is not None:
            lines.append(f"model conv MMACs {mega(self.conv_macs_before)} -> "
                         f"{mega(self.conv_macs_after)} (FLOP speed-up {self.flops_speedup:.2f}x)")
        if self.latency_speedup is not None:
            lines.append(f"{self.measure} latency {1e3 * self.latency_before:.3f} -> "
                         f"{1e3 * self.latency_after:.3f} ms per batch (latency speed-up "
                         f"{self.latency_speedup:.2f}x)")
        return "\n".join(lines)


def decompose_model(model: nn.Module, scheme="channel", energy=None, threshold=None, rank=None,
                    skip=None, example_input: torch.Tensor | None = None, target_speedup=None,
                    rank_multiple=1, measure=None, layers=None,
                    pointwise=False) -> DecompositionReport:
    """Replaces, in place, decomposable convs of ``model`` (nn.Conv2d, groups 1, kernel larger
    than 1x1) by LowRankConv2d layers, and returns a report. The convs are those named in
    ``layers``, or else all but those named in ``skip`` (None: the model's
    ``never_decomposed``, see ``decomposable_layers``). ``scheme``: "channel", "spatial",
    "tucker2" (``rank`` may then be a pair (r_in, r_out) of ints or fractions) or "decoupled".
    ``pointwise``: also the 1x1 convs (groups 1) and linear layers, each factorised in scheme
    "pointwise" (a LowRankConv2d of two 1x1 convs, a LowRankLinear of two linears), and the
    linear layers' MACs counted; ``scheme="pointwise"`` acts on those layers alone.

    Ranks: by the rank rule (``energy``, ``threshold``, and ``rank``: a per-layer cap as an int
    or a fraction of each layer's full rank as a float), or, with ``target_speedup`` t > 1
    (instead of the rule; needs ``example_input``; channel and spatial), the leximin-energy
    ranks whose conv FLOP speed-up is at least t and as close to it as the rank steps allow
    (budget.py; an unreachable t raises ValueError naming the largest reachable
    speed-up). ``rank_multiple`` m: every rank rounded up to a multiple of m, capped at the
    full rank. A layer whose factorised form does not cost fewer MACs than the conv stays a
    plain nn.Conv2d (``kept_dense``), always; without ``example_input`` that is judged at a
    large nominal input size.
    ``measure`` ("torch", "onnxruntime" or a latency.LatencyMeter; needs ``example_input``):
    each factorised layer is timed against its conv on its real input in that runtime and
    kept only if faster; then the whole model is timed against the dense one and, if it is
    slower beyond noise, the layers with the smallest gains go back to dense until it is not
    (latency.py). The measured choice has the last word: a layer measured slower
    stays dense even if the FLOP speed-up then falls below ``target_speedup``.
    With ``example_input`` (one batch), the report holds per-layer and model conv MACs."""
    registered = geometry.scheme(scheme)
    rank = registered.check_rank_spec(rank)
    if not isinstance(pointwise, bool):
        raise TypeError(f"pointwise must be a bool, got {pointwise!r}")
    if pointwise and isinstance(rank, tuple):
        raise ValueError("rank as a pair (r_in, r_out) is tucker2's; with pointwise=True give "
                         "one value, which applies to every layer")
    rank_multiple = checks.rank_multiple(rank_multiple)
    meter = latency.meter(measure)
    if target_speedup is not None:
        checks.target_speedup(target_speedup)
        if energy is not None or threshold is not None or rank is not None:
            raise ValueError("target_speedup chooses the ranks itself; pass it without energy, "
                             "threshold and rank")
    if (target_speedup is not None or meter is not None) and example_input is None:
        raise ValueError("example_input is required with target_speedup or measure")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Conv2d):
        raise ValueError("model is a single conv; use LowRankConv2d.from_conv(conv) instead")
    if isinstance(model, nn.Linear):
        raise ValueError("model is a single linear layer; use LowRankLinear.from_linear(linear) "
                         "instead")
    targets = decomposable_layers(model, skip, layers, scheme, pointwise)
    for name, conv in targets:
        if getattr(conv, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"layer {name!r} uses padding_mode='{conv.padding_mode}', which "
                             f"cannot be decomposed; pass skip=[{name!r}]")
    linear = counts_linear(scheme, pointwise)
    before = {}
    if example_input is not None:
        before = {c.name: c for c in conv_costs(model, example_input, linear)}
    plan = None if target_speedup is None else budget.plan_budget(
        model, targets, scheme, example_input, target_speedup, rank_multiple, pointwise)
    dense_model = copy.deepcopy(model) if meter is not None else None

    report = DecompositionReport(scheme, energy_level=plan and plan.energy_level,
                                 pointwise=linear)
    schemes = [layer_scheme(conv, scheme) for _, conv in targets]
    built = _factorise(targets, schemes, energy, threshold, rank, plan)
    factorised = {}
    for (name, conv), s, layer in zip(targets, schemes, built):
        full = geometry.scheme(s).full_rank(conv_weight_shape(conv))
        if plan is None:
            r = budget.round_rank(layer.rank, full, rank_multiple)
            if r != layer.rank:
                layer = decompose_layers([conv], s, ranks=[r])[0]
            hw = before[name].input_hw if name in before else None
            if not is_cheaper(conv, s, r, hw):
                layer = None
        else:
            r = plan.ranks[name]
        if layer is not None:
            factorised[name] = (conv, layer)
        report.layers.append(LayerDecomposition(
            name=name, weight_shape=tuple(conv.weight.shape), rank=full if r is None else r,
            full_rank=full, params_before=count_params(conv), params_after=count_params(conv),
            scheme=s))

    if meter is None:
        for name, (_, layer) in factorised.items():
            model.set_submodule(name, layer)
    else:
        choice = latency.choose_faster(model, dense_model, factorised, example_input, meter)
        report.measure = meter.runtime
        report.latency_before, report.latency_after = choice.before.median, choice.after.median
        for entry in report.layers:
            if entry.name in choice.layer_times:
                dense, fact = choice.layer_times[entry.name]
                entry.latency_dense, entry.latency_factorised = dense.median, fact.median
    for entry in report.layers:
        layer = model.get_submodule(entry.name)
        entry.kept_dense = not isinstance(layer, LOWRANK_LAYERS)
        entry.params_after = count_params(layer)

    if example_input is not None:
        after = {c.name: c for c in conv_costs(model, example_input, linear)}
        for entry in report.layers:
            entry.macs_before = before[entry.name].macs
            entry.macs_after = after[entry.name].macs
        report.conv_macs_before = sum(c.macs for c in before.values())
        report.conv_macs_after = sum(c.macs for c in after.values())
        if target_speedup is not None and report.flops_speedup < target_speedup:
            warnings.warn(f"the measured choice kept layers dense: conv FLOP speed-up "
                          f"{report.flops_speedup:.3f}x, below target_speedup "
                          f"{target_speedup:g}", stacklevel=2)
    return report


def _factorise(targets, schemes, energy, threshold, rank, plan) -> list:
    """The low-rank layer of each (name, layer) of ``targets`` in its scheme: at the budget's
    rank from its SVD (None where the budget keeps it dense), or by the rank rule with one
    batched factorisation per scheme and weight shape."""
    if plan is not None:
        return [None if plan.ranks[name] is None
                else lowrank_from_svd(conv, s, plan.svds[name], plan.ranks[name])
                for (name, conv), s in zip(targets, schemes)]
    built: list = [None] * len(targets)
    for s in dict.fromkeys(schemes):
        indices = [i for i, t in enumerate(schemes) if t == s]
        modules = [targets[i][1] for i in indices]
        ranks = [geometry.scheme(s).layer_rank(rank, conv_weight_shape(m)) for m in modules]
        for i, layer in zip(indices, decompose_layers(modules, s, energy, threshold, ranks)):
            built[i] = layer
    return built
