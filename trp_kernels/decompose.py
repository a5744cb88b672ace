"""decompose_model: replace the decomposable convs of a model by LowRankConv2d layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import geometry
from .flops import conv_costs, count_params
from .layers import LowRankConv2d


def is_decomposable(module: nn.Module) -> bool:
    """An nn.Conv2d with groups 1 and a kernel larger than 1x1 (what TRP factorises)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.kernel_size[0] * module.kernel_size[1] > 1
    )


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


@dataclass
class DecompositionReport:
    scheme: str
    layers: list[LayerDecomposition] = field(default_factory=list)
    conv_macs_before: int | None = None   # every conv of the model, per sample
    conv_macs_after: int | None = None

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
            )
        lines.append(f"decomposed layers: {len(self.layers)}, scheme {self.scheme}, params "
                     f"{self.params_before} -> {self.params_after}")
        if self.flops_speedup is not None:
            lines.append(f"model conv MMACs {mega(self.conv_macs_before)} -> "
                         f"{mega(self.conv_macs_after)} (FLOP speed-up {self.flops_speedup:.2f}x)")
        return "\n".join(lines)


def never_decomposed(model: nn.Module) -> tuple[str, ...]:
    """The layer names ``model`` asks to keep dense, from its ``never_decomposed`` attribute
    (this library's ResNets name their first conv); none for a model without one."""
    return tuple(getattr(model, "never_decomposed", ()))


def decomposable_layers(model: nn.Module, skip=None, layers=None) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) in model order of the decomposable convs to act on: those named in
    ``layers`` if given (each must be a decomposable conv), else every decomposable conv not
    named in ``skip``; ``skip=None`` means the model's ``never_decomposed`` (see there)."""
    modules = dict(model.named_modules())
    if layers is not None:
        if skip is not None:
            raise ValueError("give skip (layers to leave dense) or layers (layers to "
                             "decompose), not both")
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of layer names, got the str {layers!r}")
        chosen = set(layers)
        unknown = sorted(chosen - set(modules))
        if unknown:
            raise ValueError(f"layers names layers the model does not have: {unknown}")
        dense = sorted(name for name in chosen if not is_decomposable(modules[name]))
        if dense:
            raise ValueError(f"layers names modules that are not decomposable convs (nn.Conv2d, "
                             f"groups 1, kernel larger than 1x1): {dense}")
        return [(name, m) for name, m in modules.items() if name in chosen]
    skip = set(never_decomposed(model) if skip is None else skip)
    unknown = sorted(skip - set(modules))
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {unknown}")
    return [(name, m) for name, m in modules.items() if is_decomposable(m) and name not in skip]


def decompose_model(model: nn.Module, scheme="channel", energy=None, threshold=None, rank=None,
                    skip=None, example_input: torch.Tensor | None = None,
                    layers=None) -> DecompositionReport:
    """Replaces, in place, every decomposable conv of ``model`` (nn.Conv2d, groups 1, kernel
    larger than 1x1) by ``LowRankConv2d.from_conv`` with the given rank rule, and returns a
    report. The convs are those named in ``layers``, or else all but those named in ``skip``
    (None: the model's ``never_decomposed``, see ``decomposable_layers``). ``rank`` is a
    per-layer cap (int) or a fraction of each layer's full rank (float). With
    ``example_input`` (one batch), the report also holds per-layer and whole-model conv MACs
    per sample. ``scheme``: "channel", "spatial", "tucker2" (``rank`` may then be a pair
    (r_in, r_out) of ints or fractions) or "decoupled"."""
    fmt = geometry.scheme(scheme)
    rank = fmt.check_rank_spec(rank)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Conv2d):
        raise ValueError("model is a single conv; use LowRankConv2d.from_conv(conv) instead")
    targets = decomposable_layers(model, skip, layers)
    before = {}
    if example_input is not None:
        before = {c.name: c for c in conv_costs(model, example_input)}

    report = DecompositionReport(scheme)
    for name, conv in targets:
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer {name!r} uses padding_mode='{conv.padding_mode}', which "
                             f"cannot be decomposed; pass skip=[{name!r}]")
    # one batched factorisation per weight shape
    layers = LowRankConv2d.from_convs(
        [conv for _, conv in targets], scheme=scheme, energy=energy, threshold=threshold,
        ranks=[fmt.layer_rank(rank, conv.weight.shape) for _, conv in targets])
    for (name, conv), layer in zip(targets, layers):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        report.layers.append(LayerDecomposition(
            name=name,
            weight_shape=tuple(conv.weight.shape),
            rank=layer.rank,
            full_rank=layer.full_rank,
            params_before=count_params(conv),
            params_after=count_params(layer),
        ))

    if example_input is not None:
        after = {c.name: c for c in conv_costs(model, example_input)}
        for entry in report.layers:
            entry.macs_before = before[entry.name].macs
            entry.macs_after = after[entry.name].macs
        report.conv_macs_before = sum(c.macs for c in before.values())
        report.conv_macs_after = sum(c.macs for c in after.values())
    return report
