"""What a finished run reports: accuracy, conv MACs and speed-up, parameters, measured latency
and the rank of every layer; written as report.json, report.md and report.png."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..compression.files import atomic_write, atomic_write_text
from ..compression.latency import LatencyMeter
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
    ``decomposition``: the DecompositionReport of a measured decomposition (``measure=``), whose
    per-layer latencies (ms per batch, in its runtime) the rows then carry."""
    costs = {c.name: c for c in costs}
    measured = {l.name: l for l in getattr(decomposition, "layers", ())
                if l.latency_dense is not None}
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
        if dense.name in measured:
            entry = measured[dense.name]
            time = entry.latency_dense if rows[-1]["kept_dense"] else entry.latency_factorised
            rows[-1].update(latency_ms=1e3 * time, dense_latency_ms=1e3 * entry.latency_dense,
                            latency_speedup=entry.latency_dense / time,
                            latency_runtime=decomposition.measure)
    return rows


def model_figures(model: nn.Module, dense_model: nn.Module, names, scheme: str,
                  example_input: torch.Tensor, latency_input: torch.Tensor,
                  decomposition=None, onnxruntime: bool = False, pointwise: bool = False) -> dict:
    """The model-dependent part of a report: MACs, speed-up, parameters, latency (torch, and
    ONNX Runtime with ``onnxruntime``), layers (with measured per-layer latencies when
    ``decomposition`` was measured). The MACs count linear layers where the method acts on
    them (``pointwise`` or scheme "pointwise")."""
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
    runtimes = ("torch", "onnxruntime") if onnxruntime else ("torch",)
    for runtime in runtimes:
        dense, compressed = LatencyMeter(runtime).seconds([dense_model, model], latency_input)
        prefix = "" if runtime == "torch" else f"{runtime}_"
        figures.update({f"{prefix}latency_ms": 1e3 * compressed.median,
                        f"dense_{prefix}latency_ms": 1e3 * dense.median,
                        f"{prefix}latency_speedup": dense.median / compressed.median})
    return figures


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(report: dict) -> str:
    config = report.get("config", {})
    lines = [
        f"# {report['method']} / {report['scheme']} on {config.get('dataset', '?')} "
        f"({config.get('model', '?')})",
        "",
        "| | compressed | dense |",
        "|---|---|---|",
        f"| test accuracy | {_percent(report['test_accuracy'])} "
        f"| {_percent(report['dense_test_accuracy'])} |",
        f"| conv MMACs per image | {report['conv_macs'] / 1e6:.3f} "
        f"| {report['dense_conv_macs'] / 1e6:.3f} |",
        f"| parameters | {report['params']:,} | {report['dense_params']:,} |",
        f"| latency, batch {report['latency_batch']} on {report['device']} (ms) "
        f"| {report['latency_ms']:.2f} | {report['dense_latency_ms']:.2f} |",
    ]
    if "onnxruntime_latency_ms" in report:
        lines.append(f"| latency in ONNX Runtime, batch {report['latency_batch']} (ms) "
                     f"| {report['onnxruntime_latency_ms']:.2f} "
                     f"| {report['dense_onnxruntime_latency_ms']:.2f} |")
    speedups = [f"Conv FLOP speed-up: **{report['flops_speedup']:.2f}x**"]
    if "latency_ms" in report:
        speedups.append(f"latency speed-up: {report['dense_latency_ms'] / report['latency_ms']:.2f}x")
    if "onnxruntime_latency_ms" in report:
        speedups.append(f"in ONNX Runtime: {report['onnxruntime_latency_speedup']:.2f}x")
    lines += [
        "",
        "; ".join(speedups) + ".",
        "",
        "| layer | weight | rank / full | MMACs (dense) | FLOP speed-up | latency speed-up "
        "| params (dense) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["layers"]:
        shape = "x".join(map(str, row["weight_shape"]))
        rank = ("dense" if row.get("kept_dense")
                else f"{format_rank(row['rank'])} / {format_rank(row['full_rank'])}")
        measured = (f"{row['latency_speedup']:.2f}x ({row['latency_runtime']})"
                    if "latency_speedup" in row else "-")
        lines.append(f"| {row['name']} | {shape} | {rank} "
                     f"| {row['macs'] / 1e6:.3f} ({row['dense_macs'] / 1e6:.3f}) "
                     f"| {row['dense_macs'] / row['macs']:.2f}x | {measured} "
                     f"| {row['params']:,} ({row['dense_params']:,}) |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Per-layer rank against full rank, and per-layer MACs against the dense layer's."""
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
    bottom.bar(x, [r["dense_macs"] / 1e6 for r in rows], color="#d0d7e1", label="dense")
    bottom.bar(x, [r["macs"] / 1e6 for r in rows], color="#c05621", label=report["method"],
               hatch=["//" if r.get("kept_dense") else "" for r in rows])
    bottom.set_ylabel("MMACs per image")
    bottom.legend(loc="upper left", title="hatched: kept dense"
                  if any(r.get("kept_dense") for r in rows) else None)
    bottom.set_xticks(list(x), [r["name"] for r in rows], rotation=90, fontsize=7)
    top.set_title(f"{report['method']} / {report['scheme']}: "
                  f"{_percent(report['test_accuracy'])} test accuracy, "
                  f"{report['flops_speedup']:.2f}x conv FLOP speed-up")
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
