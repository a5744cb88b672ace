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
from ..schemes.layer_kinds import LOWRANK_LAYERS, conv_weight_shape, decompose_layers
from . import accuracy, budget, fidelity, latency, sensitivity
from .batchnorm import adapt_batchnorm, batchnorm_layers
from .selection import acts_on, counts_linear, decomposable_layers, layer_scheme, per_scheme


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
    energy_kept: float | None = None  # fraction of the layer's spectral energy kept (1: dense)
    scheme: str | None = None         # the layer's own: "pointwise" for 1x1 convs and linears
    latency_spread: float | None = None   # when measured: the larger of its two timings'
    # select="accuracy": the sweep's points, [{"rank", "energy", "top1", "loss"}] measured on
    # the calibration data with this layer alone factorised (sensitivity.py)
    sensitivity: list | None = None


@dataclass
class DecompositionReport:
    scheme: str
    layers: list[LayerDecomposition] = field(default_factory=list)
    conv_macs_before: int | None = None   # every conv of the model, per sample
    conv_macs_after: int | None = None
    measure: str | None = None            # the runtime of the latencies
    latency_before: float | None = None   # seconds per batch of example_input, when measured
    latency_after: float | None = None    # (best of the interleaved rounds: latency.py)
    plan: str | None = None               # measured: "measured", "unmeasured" or "dense"
    plan_latencies: dict = field(default_factory=dict)   # plan -> seconds, one comparison
    energy_level: float | None = None     # with target_speedup: TRP's energy reaching it
    skipped: list[str] = field(default_factory=list)   # layers acted on but left dense by skip
    pointwise: bool = False               # 1x1 convs and linear layers acted on (and counted)
    # against the dense model, on calibration_input (or example_input): fidelity.py
    output_error: float | None = None     # relative L2 error of the outputs
    top1_agreement: float | None = None   # classifiers: fraction of equal top-1 classes
    fidelity_samples: int | None = None
    target_speedup: float | None = None
    select: str = "energy"                # how the budget's ranks were chosen
    # with eval_data: {"dense": top-1, "compressed": top-1} on it, and its size
    accuracy: dict | None = None
    eval_samples: int | None = None
    # select="accuracy": the calibration figures of the choice (sensitivity.py): the plan kept,
    # each plan's loss and top-1, the dense model's, the samples, the cache file
    selection: dict | None = None
    # measured: the largest spread of the choice's timings, whether all got under 5%, rounds
    timing_spread: float | None = None
    timing_steady: bool | None = None
    timing_rounds: int | None = None
    batchnorm_adapted: int = 0            # BatchNorm layers re-estimated on calibration_data
    unadapted_accuracy: float | None = None   # eval_data top-1 before they were

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
            "plan": self.plan,
            "plan_latencies": dict(self.plan_latencies),
            "energy_level": self.energy_level,
            "skipped": list(self.skipped),
            "output_error": self.output_error,
            "top1_agreement": self.top1_agreement,
            "fidelity_samples": self.fidelity_samples,
            "pointwise": self.pointwise,
            "target_speedup": self.target_speedup,
            "missed_target": self.missed_target,
            "select": self.select,
            "accuracy": None if self.accuracy is None else dict(self.accuracy),
            "eval_samples": self.eval_samples,
            "selection": None if self.selection is None else dict(self.selection),
            "timing_spread": self.timing_spread,
            "timing_steady": self.timing_steady,
            "timing_rounds": self.timing_rounds,
            "timing_warning": self.timing_warning,
            "batchnorm_adapted": self.batchnorm_adapted,
            "unadapted_accuracy": self.unadapted_accuracy,
        }

    @classmethod
    def from_dict(cls, record: dict) -> "DecompositionReport":
        """The report ``to_dict`` wrote (figures derived from others are recomputed)."""
        names = {f for f in cls.__dataclass_fields__}
        report = cls(**{k: v for k, v in record.items() if k in names and k != "layers"})
        for layer in record.get("layers", []):
            entry = LayerDecomposition(**layer)
            entry.weight_shape = tuple(entry.weight_shape)
            entry.rank, entry.full_rank = (tuple(r) if isinstance(r, list) else r
                                           for r in (entry.rank, entry.full_rank))
            report.layers.append(entry)
        return report

    @property
    def missed_target(self) -> str | None:
        """Why the FLOP speed-up is below ``target_speedup``, when it is (the measured choice
        kept layers dense that the budget factorised), as one sentence; else None."""
        if self.target_speedup is None or self.flops_speedup is None \
                or self.flops_speedup >= self.target_speedup:
            return None
        return (f"conv FLOP speed-up {self.flops_speedup:.2f}x misses target_speedup "
                f"{self.target_speedup:g}: the measured choice kept the {self.plan} plan, "
                f"{sum(l.kept_dense for l in self.layers)} of {len(self.layers)} layers dense, "
                f"because it ran faster in {self.measure}")

    @property
    def timing_warning(self) -> str | None:
        """The measured choice's timings, when they did not get under 5% spread
        (latency.timing_warning), as one sentence; else None."""
        if self.timing_spread is None:
            return None
        return latency.timing_warning(self.timing_spread, self.timing_rounds)

    def __str__(self) -> str:
        rows = [("layer", "weight", "rank", "scheme", "energy", "params", "MMACs", "")]
        for l in self.layers:
            rows.append((
                l.name, "x".join(map(str, l.weight_shape)),
                f"{geometry.format_rank(l.rank)}/{geometry.format_rank(l.full_rank)}",
                l.scheme or self.scheme,
                "-" if l.energy_kept is None else f"{100 * l.energy_kept:.1f}%",
                f"{l.params_before}->{l.params_after}",
                "-" if l.macs_before is None else f"{_mega(l.macs_before)}->{_mega(l.macs_after)}",
                "dense" if l.kept_dense else ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [" ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                 for row in rows]
        kept = sum(l.kept_dense for l in self.layers)
        lines.append(f"decomposed layers: {len(self.layers) - kept} of {len(self.layers)} "
                     f"({kept} kept dense), scheme {self.scheme}, params {self.params_before} -> "
                     f"{self.params_after}")
        if self.skipped:
            lines.append(f"layers left dense by skip (by name): "
                         f"{', '.join(repr(name) for name in self.skipped)}")
        if self.flops_speedup is not None:
            lines.append(f"model conv MMACs {_mega(self.conv_macs_before)} -> "
                         f"{_mega(self.conv_macs_after)} (FLOP speed-up {self.flops_speedup:.2f}x)")
        if self.latency_speedup is not None:
            lines.append(f"{self.measure} latency {1e3 * self.latency_before:.3f} -> "
                         f"{1e3 * self.latency_after:.3f} ms per batch (latency speed-up "
                         f"{self.latency_speedup:.2f}x); kept the {self.plan} plan of "
                         + ", ".join(f"{plan} {1e3 * t:.3f} ms"
                                     for plan, t in self.plan_latencies.items()))
        if self.timing_warning:
            lines.append(f"warning: {self.timing_warning}")
        if self.missed_target:
            lines.append(f"warning: {self.missed_target}")
        if self.selection is not None:
            lines.append(f"ranks by accuracy on {self.selection['samples']} calibration "
                         f"samples: kept the {self.selection['kept']} plan (calibration loss "
                         + ", ".join(f"{plan} {loss:.4f}"
                                     for plan, loss in self.selection["loss"].items()) + ")")
        if self.accuracy is not None:
            lines.append(f"top-1 on {self.eval_samples} eval_data samples: dense "
                         f"{100 * self.accuracy['dense']:.2f}%, compressed "
                         f"{100 * self.accuracy['compressed']:.2f}%"
                         + ("" if self.unadapted_accuracy is None else
                            f" ({100 * self.unadapted_accuracy:.2f}% before the "
                            f"{self.batchnorm_adapted} BatchNorm layers were re-estimated)"))
        lines += self.fidelity_lines()
        return "\n".join(lines)

    def fidelity_lines(self) -> list[str]:
        """The model's fidelity figures as text, and the warning line when the top-1 agreement
        is below ``fidelity.AGREEMENT_WARNING``."""
        if self.output_error is None:
            return []
        line = (f"outputs against the dense model on {self.fidelity_samples} inputs: relative "
                f"error {self.output_error:.3g}")
        if self.top1_agreement is None:
            return [line]
        lines = [f"{line}, top-1 agreement {100 * self.top1_agreement:.1f}%"]
        warning = self.fidelity_warning()
        return lines + ([f"warning: {warning}"] if warning else [])

    def fidelity_warning(self) -> str | None:
        if self.top1_agreement is None or self.top1_agreement >= fidelity.AGREEMENT_WARNING:
            return None
        return (f"the compressed model picks the dense model's top-1 class on only "
                f"{100 * self.top1_agreement:.1f}% of {self.fidelity_samples} inputs (below "
                f"{100 * fidelity.AGREEMENT_WARNING:.0f}%): fine-tune it, or keep more energy "
                f"(a smaller target_speedup)")


def _mega(value) -> str:
    return f"{value / 1e6:.3f}"


def decompose_model(model: nn.Module, scheme="channel", energy=None, threshold=None, rank=None,
                    skip=None, example_input: torch.Tensor | None = None, target_speedup=None,
                    rank_multiple=1, measure=None, layers=None,
                    calibration_input: torch.Tensor | None = None,
                    pointwise=False, select="energy", calibration_data=None, eval_data=None,
                    progress: bool | None = None) -> DecompositionReport:
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
    (instead of the rule; needs ``example_input``; every scheme), the leximin-energy
    ranks whose conv FLOP speed-up is at least t and as close to it as the rank steps allow
    (budget.py; an unreachable t raises ValueError naming the largest reachable
    speed-up). ``rank_multiple`` m: every rank rounded up to a multiple of m, capped at the
    full rank. A layer whose factorised form does not cost fewer MACs than the conv stays a
    plain nn.Conv2d (``kept_dense``), always; without ``example_input`` that is judged at a
    large nominal input size.
    ``measure`` ("torch", "onnxruntime" or a latency.LatencyMeter; needs ``example_input``):
    each factorised layer is timed against its conv on its real input in that runtime; then
    the model with the layers measured faster, the model with every layer factorised and the
    dense model are timed against each other in interleaved rounds, and the fastest is kept
    (latency.py). The measured choice has the last word: the FLOP speed-up may then fall
    below ``target_speedup`` (a warning says so).
    With ``example_input`` (one batch), the report holds per-layer and model conv MACs.
    Fidelity (fidelity.py): every layer's ``energy_kept``, and, on ``calibration_input`` (a
    batch; default ``example_input``), the relative output error against the dense model and
    a classifier's top-1 agreement; a FidelityWarning when that is below
    ``fidelity.AGREEMENT_WARNING``.
    Labelled data (accuracy.py: a pair (inputs, labels) of tensors, or an iterable of such
    batches): ``eval_data``, held out, gives the report's top-1 ``accuracy`` of the dense and
    the compressed model; ``select="accuracy"`` (with ``target_speedup``; the default "energy"
    is the leximin-energy budget) chooses the budget's ranks by a per-layer sensitivity sweep
    on ``calibration_data`` (sensitivity.py), each layer's points in the report. With
    ``calibration_data``, the BatchNorm layers' running statistics are re-estimated on it once
    the layers are factorised (batchnorm.py: the dense model's no longer fit).
    ``progress``: bars for the measured choice and the sweep (None: when stderr is a
    terminal)."""
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
    if select not in sensitivity.SELECTIONS:
        raise ValueError(f"select must be one of {', '.join(sensitivity.SELECTIONS)}, got "
                         f"{select!r}")
    calibration_batches = None
    if select == "accuracy":
        if target_speedup is None:
            raise ValueError("select='accuracy' chooses the ranks of a FLOP budget: give "
                             "target_speedup")
        if calibration_data is None:
            raise ValueError("select='accuracy' needs calibration_data: labelled (inputs, "
                             "labels) to measure each layer's sensitivity on")
    if calibration_data is not None:
        calibration_batches = accuracy.labelled_batches(calibration_data, "calibration_data")
    eval_batches = None if eval_data is None else accuracy.labelled_batches(eval_data,
                                                                            "eval_data")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Conv2d):
        raise ValueError("model is a single conv; use LowRankConv2d.from_conv(conv) instead")
    if isinstance(model, nn.Linear):
        raise ValueError("model is a single linear layer; use LowRankLinear.from_linear(linear) "
                         "instead")
    targets = decomposable_layers(model, skip, layers, scheme, pointwise)
    acted = {name for name, _ in targets}
    skipped = [] if layers is not None else [
        name for name, m in model.named_modules()
        if acts_on(m, scheme, pointwise) and name not in acted]
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
    check_input = example_input if calibration_input is None else \
        checks.tensor(calibration_input, "calibration_input")
    dense_outputs = None if check_input is None else fidelity.model_outputs(model, check_input)
    dense_accuracy = None if eval_batches is None else accuracy.measure(model, eval_batches)

    report = DecompositionReport(scheme, energy_level=plan and plan.energy_level, skipped=skipped,
                                 pointwise=linear, target_speedup=target_speedup, select=select)
    schemes = [layer_scheme(conv, scheme) for _, conv in targets]
    swept = {}
    if select == "accuracy":
        choice = sensitivity.plan_by_accuracy(model, plan, targets, schemes, calibration_batches,
                                              progress)
        plan, swept = choice.plan, choice.sensitivity.layers
        report.selection = {
            "kept": choice.kept, "loss": choice.loss, "top1": choice.top1,
            "dense_loss": choice.sensitivity.dense.loss, "dense_top1": choice.sensitivity.dense.top1,
            "samples": choice.sensitivity.dense.samples, "cached": choice.sensitivity.cached,
            "cache_file": choice.sensitivity.cache_file}
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
            scheme=s, sensitivity=[vars(p) for p in swept[name]] if name in swept else None))

    if meter is None:
        for name, (_, layer) in factorised.items():
            model.set_submodule(name, layer)
    else:
        choice = latency.choose_faster(model, dense_model, factorised, example_input, meter,
                                       progress)
        report.measure, report.plan = meter.runtime, choice.plan
        report.latency_before, report.latency_after = choice.before.best, choice.after.best
        report.plan_latencies = {plan: t.best for plan, t in choice.plans.items()}
        report.timing_spread, report.timing_steady = choice.spread, choice.steady
        report.timing_rounds = max(t.rounds for t in choice.timings)
        for entry in report.layers:
            if entry.name in choice.layer_times:
                dense, fact = choice.layer_times[entry.name]
                entry.latency_dense, entry.latency_factorised = dense.best, fact.best
                entry.latency_spread = max(dense.spread, fact.spread)
    convs = dict(targets)
    for entry in report.layers:
        layer = model.get_submodule(entry.name)
        entry.kept_dense = not isinstance(layer, LOWRANK_LAYERS)
        entry.params_after = count_params(layer)
        entry.energy_kept = 1.0 if entry.kept_dense else \
            fidelity.energy_kept(convs[entry.name].weight, layer)
    if calibration_batches is not None and batchnorm_layers(model) \
            and any(not l.kept_dense for l in report.layers):
        if eval_batches is not None:
            report.unadapted_accuracy = accuracy.measure(model, eval_batches).top1
        report.batchnorm_adapted = adapt_batchnorm(model, calibration_batches)
    if dense_accuracy is not None:
        report.accuracy = {"dense": dense_accuracy.top1,
                           "compressed": accuracy.measure(model, eval_batches).top1}
        report.eval_samples = dense_accuracy.samples
    if dense_outputs is not None:
        result = fidelity.output_fidelity(dense_outputs, fidelity.model_outputs(model, check_input),
                                          check_input.shape[0])
        report.output_error, report.top1_agreement = result.relative_error, result.top1_agreement
        report.fidelity_samples = result.samples
        warning = report.fidelity_warning()
        if warning:
            warnings.warn(warning, fidelity.FidelityWarning, stacklevel=2)

    if example_input is not None:
        after = {c.name: c for c in conv_costs(model, example_input, linear)}
        for entry in report.layers:
            entry.macs_before = before[entry.name].macs
            entry.macs_after = after[entry.name].macs
        report.conv_macs_before = sum(c.macs for c in before.values())
        report.conv_macs_after = sum(c.macs for c in after.values())
        if report.missed_target:
            warnings.warn(report.missed_target, stacklevel=2)
    return report


def _factorise(targets, schemes, energy, threshold, rank, plan) -> list:
    """The low-rank layer of each (name, layer) of ``targets`` in its scheme: the budget's
    (``BudgetPlan.layer``; None where it keeps the layer dense), or by the rank rule with one
    batched factorisation per scheme and weight shape."""
    if plan is not None:
        return [plan.layer(name, module, s) for (name, module), s in zip(targets, schemes)]

    def by_rule(modules, s):
        ranks = [geometry.scheme(s).layer_rank(rank, conv_weight_shape(m)) for m in modules]
        return decompose_layers(modules, s, energy, threshold, ranks)

    return per_scheme(targets, schemes, by_rule)
