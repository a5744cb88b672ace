"""What a finished run reports: accuracy, conv MACs and speed-up, parameters, measured latency
and the rank of every layer; written as report.json, report.md and report.png."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..compression.files import atomic_write, atomic_write_text
from ..compression.latency import LatencyMeter, timing_warning
from ..compression.selection import counts_linear, layer_scheme
from ..schemes.costs import ConvCost, conv_costs, count_params
from ..schemes.factorization import full_rank
from ..schemes.geometry import format_rank
from ..schemes.layer_kinds import LOWRANK_LAYERS, conv_weight_shape

# The keys every report.json holds (tests and users read them); the rest is context.
REQUIRED_KEYS = ("method", "scheme", "test_accuracy", "dense_test_accuracy", "flops_speedup",
                 "params", "dense_params", "latency_ms", "dense_latency_ms", "layers")


def layer_rows(model: nn.Module, dense_model: nn.Module, names, scheme: str,
               costs: list[ConvCost], dense_costs: list[ConvCost], decomposition=None
               ) -> list[dict]:
    """One row per layer in ``names`` (the decomposable convs the method acts on), in forward
    order: its rank (the full rank while it is dense; [r_in, r_out] for tucker2), full rank,
    whether it is (still) a plain conv, MACs per sample now and dense and their ratio, and
    parameters now and dense. ``costs`` / ``dense_costs``: ``conv_costs`` of the two models.
    ``decomposition``: the DecompositionReport of the method's decomposition, whose per-layer
    energy kept and, when measured (``measure=``), latencies (ms per batch, in its runtime) the
    rows then carry."""
    costs = {c.name: c for c in costs}
    decomposed = {l.name: l for l in getattr(decomposition, "layers", ())}
    rows = []
    for dense in dense_costs:
        if dense.name not in names:
            continue
        layer = model.get_submodule(dense.name)
        lowrank = isinstance(layer, LOWRANK_LAYERS)
        dense_layer = dense_model.get_submodule(dense.name)
        k = full_rank(conv_weight_shape(dense_layer),
                      layer.scheme if lowrank else layer_scheme(dense_layer, scheme))
        rows.append({
            "name": dense.name,
            "weight_shape": list(dense_layer.weight.shape),
            "rank": layer.rank if lowrank else k,
            "full_rank": k,
            "macs": costs[dense.name].macs,
            "dense_macs": dense.macs,
            "params": costs[dense.name].params,
            "dense_params": dense.params,
            "kept_dense": not lowrank,
            "flops_speedup": dense.macs / costs[dense.name].macs,
        })
        entry = decomposed.get(dense.name)
        if entry is not None and entry.energy_kept is not None:
            rows[-1]["energy_kept"] = entry.energy_kept
        if entry is not None and entry.latency_dense is not None:
            time = entry.latency_dense if rows[-1]["kept_dense"] else entry.latency_factorised
            rows[-1].update(latency_ms=1e3 * time, dense_latency_ms=1e3 * entry.latency_dense,
                            latency_speedup=entry.latency_dense / time,
                            latency_runtime=decomposition.measure,
                            latency_spread=entry.latency_spread)
        if entry is not None and entry.sensitivity is not None:
            rows[-1]["sensitivity"] = entry.sensitivity
    return rows


def model_figures(model: nn.Module, dense_model: nn.Module, names, scheme: str,
                  example_input: torch.Tensor, latency_input: torch.Tensor,
                  decomposition=None, onnxruntime: bool = False, pointwise: bool = False) -> dict:
    """The model-dependent part of a report: MACs, speed-up, parameters, latency (torch, and
    ONNX Runtime with ``onnxruntime``), layers (with each layer's energy kept, and measured
    per-layer latencies when ``decomposition`` was measured), the plan a measured choice kept
    with every plan's latency (``plan``, ``plan_latency_ms``), and the decomposition's fidelity
    against the dense model (``output_error``, ``top1_agreement``, on ``fidelity_samples``
    inputs) when it has one. The MACs count linear layers where the method acts on them
    (``pointwise`` or scheme "pointwise")."""
    linear = counts_linear(scheme, pointwise)
    costs = conv_costs(model, example_input, linear)
    dense_costs = conv_costs(dense_model, example_input, linear)
    macs, dense_macs = sum(c.macs for c in costs), sum(c.macs for c in dense_costs)
    figures = {
        "flops_speedup": dense_macs / macs,
        "conv_macs": macs,
        "dense_conv_macs": dense_macs,
        "params": count_params(model),
        "dense_params": count_params(dense_model),
        "latency_batch": latency_input.shape[0],
        "layers": layer_rows(model, dense_model, names, scheme, costs, dense_costs,
                             decomposition),
    }
    if getattr(decomposition, "plan", None) is not None:
        figures.update(measure=decomposition.measure, plan=decomposition.plan,
                       plan_latency_ms={plan: 1e3 * t
                                        for plan, t in decomposition.plan_latencies.items()},
                       plan_spread=decomposition.timing_spread,
                       plan_steady=decomposition.timing_steady,
                       plan_rounds=decomposition.timing_rounds)
    if getattr(decomposition, "target_speedup", None) is not None:
        figures.update(target_speedup=decomposition.target_speedup,
                       missed_target=decomposition.missed_target)
    if getattr(decomposition, "selection", None) is not None:
        figures.update(select=decomposition.select, selection=decomposition.selection)
    if getattr(decomposition, "batchnorm_adapted", 0):
        figures.update(batchnorm_adapted=decomposition.batchnorm_adapted,
                       unadapted_accuracy=decomposition.unadapted_accuracy)
    if getattr(decomposition, "output_error", None) is not None:
        figures.update(output_error=decomposition.output_error,
                       top1_agreement=decomposition.top1_agreement,
                       fidelity_samples=decomposition.fidelity_samples,
                       fidelity_warning=decomposition.fidelity_warning())
    runtimes = ("torch", "onnxruntime") if onnxruntime else ("torch",)
    for runtime in runtimes:
        dense, compressed = LatencyMeter(runtime).seconds([dense_model, model], latency_input)
        prefix = "" if runtime == "torch" else f"{runtime}_"
        figures.update(latency_figures(dense, compressed, prefix))
    return figures


def latency_figures(dense, compressed, prefix: str = "") -> dict:
    """A report's keys for the Timings of the dense and the compressed model: the best rounds
    (ms), their ratio, and each one's spread (median / best) and rounds."""
    return {f"{prefix}latency_ms": 1e3 * compressed.best,
            f"dense_{prefix}latency_ms": 1e3 * dense.best,
            f"{prefix}latency_speedup": dense.best / compressed.best,
            f"{prefix}latency_spread": compressed.spread,
            f"dense_{prefix}latency_spread": dense.spread,
            f"{prefix}latency_rounds": compressed.rounds}


def largest_spread(report: dict) -> float | None:
    """The largest spread of the report's timings (the models', the measured choice's), or
    None without timings."""
    spreads = [v for k, v in report.items() if k.endswith("spread") and v is not None]
    spreads += [row["latency_spread"] for row in report.get("layers", ())
                if row.get("latency_spread") is not None]
    return max(spreads, default=None)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def scheme_label(scheme: str, pointwise: bool) -> str:
    """Every scheme a run uses: the scheme, and pointwise beside it with ``pointwise``."""
    return f"{scheme} + pointwise" if pointwise and scheme != "pointwise" else scheme


def title(report: dict) -> str:
    """The report's own ``title``, or the trainer's: method / schemes on dataset (model)."""
    if report.get("title"):
        return report["title"]
    config = report.get("config", {})
    schemes = scheme_label(report["scheme"], bool(config.get("pointwise")))
    return (f"{report['method']} / {schemes} on {config.get('dataset', '?')} "
            f"({config.get('model', '?')})")


def _spread(value) -> str:
    """A spread (median / best) as the percent the median round was slower."""
    return "" if value is None else f" (+{100 * (value - 1):.0f}%)"


def choice_lines(report: dict) -> list[str]:
    """Which plan the measured choice kept, every plan's time, whether its timings got steady,
    and a missed FLOP target, as markdown."""
    lines = []
    if report.get("plan") is not None:
        times = ", ".join(f"{plan} {ms:.2f} ms" for plan, ms in report["plan_latency_ms"].items())
        steady = ""
        if report.get("plan_spread") is not None:
            steady = (f" Its timings got under 5% spread (largest {_spread(report['plan_spread'])[2:-1]}, "
                      f"{report['plan_rounds']} rounds)." if report.get("plan_steady") else
                      f" Its timings could not be brought under 5% spread in "
                      f"{report['plan_rounds']} rounds (largest "
                      f"{_spread(report['plan_spread'])[2:-1]}): the choice may follow the load "
                      f"of the moment.")
        lines += ["", f"Measured choice in {report['measure']}: kept the {report['plan']} plan "
                      f"(whole models, best round: {times}).{steady}"]
    if report.get("missed_target"):
        lines += ["", f"**Target missed**: {report['missed_target']}."]
    return lines


def timing_lines(report: dict) -> list[str]:
    """How the latencies were timed, and the warning when they were not steady, as
    markdown."""
    spread = largest_spread(report)
    if spread is None:
        return []
    lines = ["", "Latencies are the best of interleaved rounds; in parentheses how much slower "
                 "the median round was (the spread: under 5% is steady)."]
    warning = timing_warning(spread)
    return lines + (["", f"**Warning**: {warning}."] if warning else [])


def selection_lines(report: dict) -> list[str]:
    """The ranks chosen by accuracy: the plan kept and each layer's sensitivity, as
    markdown."""
    selection = report.get("selection")
    if selection is None:
        return []
    losses = ", ".join(f"{plan} {loss:.4f} (top-1 {_percent(selection['top1'][plan])})"
                       for plan, loss in selection["loss"].items())
    lines = ["", f"Ranks chosen by accuracy on {selection['samples']} calibration images: kept "
                 f"the {selection['kept']} plan; calibration loss of the whole model: {losses}; "
                 f"dense {selection['dense_loss']:.4f} (top-1 "
                 f"{_percent(selection['dense_top1'])}).", "",
             "Sensitivity: each layer alone at a rank, the others dense; the calibration top-1 "
             "(and loss) of the model.", "",
             "| layer | rank: top-1 (loss) |", "|---|---|"]
    for row in report["layers"]:
        if row.get("sensitivity"):
            points = ", ".join(f"{format_rank(_rank(p['rank']))}: {_percent(p['top1'])} "
                               f"({p['loss']:.3f})" for p in row["sensitivity"])
            lines.append(f"| {row['name']} | {points} |")
    return lines


def _rank(value):
    return tuple(value) if isinstance(value, list) else value


def fidelity_lines(report: dict) -> list[str]:
    """The decomposition's fidelity against the dense model, and its warning, as markdown."""
    if report.get("output_error") is None:
        return []
    line = (f"Against the dense model at the decomposition, on {report['fidelity_samples']} "
            f"inputs: relative output error {report['output_error']:.3g}")
    if report.get("top1_agreement") is not None:
        line += f", top-1 agreement {_percent(report['top1_agreement'])}"
    lines = ["", line + "."]
    if report.get("fidelity_warning"):
        lines += ["", f"**Warning**: {report['fidelity_warning']}."]
    return lines


def accuracy_rows(report: dict) -> list[str]:
    """The accuracy rows of report.md's table: held-out top-1 of the dense, the compressed and
    the fine-tuned model (the compress command's ``accuracy``), or the trainer's test
    accuracy."""
    accuracy = report.get("accuracy")
    if accuracy is not None:
        rows = [f"| top-1 on {report['eval_samples']:,} held-out images "
                f"| {_percent(accuracy['compressed'])} | {_percent(accuracy['dense'])} |"]
        if accuracy.get("finetuned") is not None:
            epochs = report["finetune_epochs"]
            rows.append(f"| top-1 after fine-tuning ({epochs} epoch{'s' if epochs > 1 else ''}) "
                        f"| {_percent(accuracy['finetuned'])} | - |")
        return rows
    if report["test_accuracy"] is not None or report["dense_test_accuracy"] is not None:
        return [f"| test accuracy | {_percent(report['test_accuracy'])} "
                f"| {_percent(report['dense_test_accuracy'])} |"]
    return []


def batchnorm_lines(report: dict) -> list[str]:
    """The BatchNorm adaptation of a compression on calibration data, as markdown."""
    if not report.get("batchnorm_adapted"):
        return []
    line = (f"BatchNorm statistics re-estimated on the calibration images "
            f"({report['batchnorm_adapted']} layers)")
    if report.get("unadapted_accuracy") is not None and report.get("accuracy"):
        line += (f": held-out top-1 {_percent(report['unadapted_accuracy'])} with the dense "
                 f"model's statistics, {_percent(report['accuracy']['compressed'])} with the "
                 f"re-estimated ones")
    return ["", line + "."]


def skip_lines(report: dict) -> list[str]:
    if not report.get("skipped"):
        return []
    names = ", ".join(f"`{name}`" for name in report["skipped"])
    return ["", f"Layers left dense by skip (by name): {names}."]


def markdown(report: dict) -> str:
    lines = [f"# {title(report)}", "", "| | compressed | dense |", "|---|---|---|"]
    lines += accuracy_rows(report)
    lines += [
        f"| conv MMACs per image | {report['conv_macs'] / 1e6:.3f} "
        f"| {report['dense_conv_macs'] / 1e6:.3f} |",
        f"| parameters | {report['params']:,} | {report['dense_params']:,} |",
        f"| latency, batch {report['latency_batch']} on {report['device']} (ms, best round) "
        f"| {report['latency_ms']:.2f}{_spread(report.get('latency_spread'))} "
        f"| {report['dense_latency_ms']:.2f}{_spread(report.get('dense_latency_spread'))} |",
    ]
    if "onnxruntime_latency_ms" in report:
        lines.append(f"| latency in ONNX Runtime, batch {report['latency_batch']} "
                     f"(ms, best round) | {report['onnxruntime_latency_ms']:.2f}"
                     f"{_spread(report.get('onnxruntime_latency_spread'))} "
                     f"| {report['dense_onnxruntime_latency_ms']:.2f}"
                     f"{_spread(report.get('dense_onnxruntime_latency_spread'))} |")
    speedups = [f"Conv FLOP speed-up: **{report['flops_speedup']:.2f}x**"]
    if report.get("target_speedup") is not None:
        speedups[0] += f" (target {report['target_speedup']:g}x)"
    if "latency_ms" in report:
        speedups.append(f"latency speed-up: {report['dense_latency_ms'] / report['latency_ms']:.2f}x")
    if "onnxruntime_latency_ms" in report:
        speedups.append(f"in ONNX Runtime: {report['onnxruntime_latency_speedup']:.2f}x")
    lines += ["", "; ".join(speedups) + "."] + choice_lines(report) + timing_lines(report) \
        + skip_lines(report) + batchnorm_lines(report) + fidelity_lines(report) + [
        "",
        "| layer | weight | rank / full | energy kept | MMACs (dense) | FLOP speed-up "
        "| latency speed-up | params (dense) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["layers"]:
        shape = "x".join(map(str, row["weight_shape"]))
        rank = ("dense" if row.get("kept_dense")
                else f"{format_rank(row['rank'])} / {format_rank(row['full_rank'])}")
        measured = (f"{row['latency_speedup']:.2f}x ({row['latency_runtime']})"
                    f"{_spread(row.get('latency_spread'))}"
                    if "latency_speedup" in row else "-")
        lines.append(f"| {row['name']} | {shape} | {rank} | {_percent(row.get('energy_kept'))} "
                     f"| {row['macs'] / 1e6:.3f} ({row['dense_macs'] / 1e6:.3f}) "
                     f"| {row['dense_macs'] / row['macs']:.2f}x | {measured} "
                     f"| {row['params']:,} ({row['dense_params']:,}) |")
    return "\n".join(lines + selection_lines(report)) + "\n"


def plot(report: dict, path: str) -> None:
    """Per-layer rank against full rank (and the energy each layer kept), and per-layer MACs
    against the dense layer's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    x = range(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(rows) + 2), 6),
                                      sharex=True)
    # one bar per rank of a layer: tucker2's (r_in, r_out) side by side
    parts = [r["rank"] if isinstance(r["rank"], (list, tuple)) else [r["rank"]] for r in rows]
    fulls = [r["full_rank"] if isinstance(r["full_rank"], (list, tuple)) else [r["full_rank"]]
             for r in rows]
    width = 0.8 / max(len(p) for p in parts)
    for j in range(max(len(p) for p in parts)):
        at = [i - 0.4 + width * (j + 0.5) for i in x]
        top.bar(at, [f[j] if j < len(f) else 0 for f in fulls], width, color="#d0d7e1",
                label="full rank" if j == 0 else None)
        top.bar(at, [p[j] if j < len(p) else 0 for p in parts], width, color="#2b6cb0",
                label="rank" if j == 0 else None)
    top.set_ylabel("rank" if width == 0.8 else "rank (r_in, r_out)")
    top.legend(loc="upper left")
    if any("energy_kept" in r for r in rows):
        energy = top.twinx()
        energy.plot([i for i, r in zip(x, rows) if "energy_kept" in r],
                    [100 * r["energy_kept"] for r in rows if "energy_kept" in r], "o",
                    color="#c53030", label="energy kept")
        energy.set_ylim(0, 105)
        energy.set_ylabel("energy kept (%)")
        energy.legend(loc="upper right")
    bottom.bar(x, [r["dense_macs"] / 1e6 for r in rows], color="#d0d7e1", label="dense")
    bottom.bar(x, [r["macs"] / 1e6 for r in rows], color="#c05621", label=report["method"],
               hatch=["//" if r.get("kept_dense") else "" for r in rows])
    bottom.set_ylabel("MMACs per image")
    bottom.legend(loc="upper left", title="hatched: kept dense"
                  if any(r.get("kept_dense") for r in rows) else None)
    bottom.set_xticks(list(x), [r["name"] for r in rows], rotation=90, fontsize=7)
    summary = [f"{report['flops_speedup']:.2f}x conv FLOP speed-up"]
    if report["test_accuracy"] is not None:
        summary.insert(0, f"{_percent(report['test_accuracy'])} test accuracy")
    if report.get("top1_agreement") is not None:
        summary.append(f"top-1 agreement with dense {_percent(report['top1_agreement'])}")
    top.set_title(f"{title(report)}\n{', '.join(summary)}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def write_report(report: dict, out_dir: str) -> None:
    """report.json, report.md and report.png in ``out_dir`` (each written atomically)."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    atomic_write_text(json.dumps(report, indent=2) + "\n", os.path.join(out_dir, "report.json"))
    atomic_write_text(markdown(report), os.path.join(out_dir, "report.md"))
    plot(report, os.path.join(out_dir, "report.png"))
