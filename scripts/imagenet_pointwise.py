"""What the pointwise scheme reaches on ImageNet networks: pytorchcv's model definitions (random
weights; no download) at 224x224, in two tables.

  reach    the share of each network's conv + linear MACs in k x k convs of groups 1 (what the
           four TRP schemes factorise), in 1x1 convs and linear layers (the pointwise scheme),
           and in grouped / depthwise convs (neither), and the share decompose_model acts on
           without and with pointwise=True (the layers ``decomposable_layers`` selects, so the
           classifier that never_decomposed keeps dense is not counted as reachable).
  budget   decompose_model(scheme="channel", pointwise=True, target_speedup=2) after every
           weight it acts on is given a decaying spectrum (singular vectors kept, singular
           values s_i = s_1 * i^-decay, the Frobenius norm kept): the FLOP speed-up reached,
           and the dense and compressed models' latency in torch and ONNX Runtime (batch 1,
           --threads threads, the two models timed in interleaved rounds, median).

    pip install --no-deps pytorchcv   # the model definitions only; not a dependency of trp_kernels
    OMP_WAIT_POLICY=PASSIVE python scripts/imagenet_pointwise.py reach budget

(OMP_WAIT_POLICY=PASSIVE: on cores shared with other jobs, torch's OpenMP threads spin-waiting
at every op's barrier make a forward pass several times slower; docs/compression.md,
"Benchmark".)

Writes docs/results/imagenet_pointwise.{json,md} (--results) and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import sys
import time

import torch
from torch import nn

from trp_kernels.compression import decomposable_layers, decompose_model, layer_scheme
from trp_kernels.compression.latency import LatencyMeter
from trp_kernels.compression.selection import is_decomposable, is_pointwise
from trp_kernels.schemes import geometry
from trp_kernels.schemes.costs import conv_costs
from trp_kernels.schemes.matrix_views import weight_as_conv

# pytorchcv module and constructor of each network, as the tables name it
NETWORKS = {
    "MobileNetV2": ("mobilenetv2", "mobilenetv2_w1"),
    "MobileNetV3-L": ("mobilenetv3", "mobilenetv3_large_w1"),
    "EfficientNet-B0": ("efficientnet", "efficientnet_b0"),
    "ShuffleNetV2": ("shufflenetv2", "shufflenetv2_w1"),
    "RegNetX-200MF": ("regnet", "regnetx002"),
    "ResNeXt-50": ("resnext", "resnext50_32x4d"),
    "ResNet-50": ("resnet", "resnet50"),
    "DenseNet-121": ("densenet", "densenet121"),
    "ResNet-18": ("resnet", "resnet18"),
}
BUDGET_NETWORKS = ("MobileNetV2", "EfficientNet-B0", "ShuffleNetV2", "ResNet-50")
INPUT = (1, 3, 224, 224)


def network(name: str) -> nn.Module:
    module, constructor = NETWORKS[name]
    try:
        models = importlib.import_module(f"pytorchcv.models.{module}")
    except ImportError:
        sys.exit("this script needs pytorchcv's model definitions: pip install --no-deps pytorchcv")
    torch.manual_seed(0)
    return getattr(models, constructor)(pretrained=False).eval()


def reach_row(name: str) -> dict:
    model = network(name)
    x = torch.zeros(INPUT)
    costs = {c.name: c.macs for c in conv_costs(model, x, linear=True)}
    total = sum(costs.values())
    modules = dict(model.named_modules())

    def share(names):
        return sum(costs[n] for n in names) / total

    kinds = {"kxk": [n for n in costs if is_decomposable(modules[n])],
             "pointwise": [n for n in costs if is_pointwise(modules[n])]}
    kinds["grouped"] = [n for n in costs if n not in kinds["kxk"] + kinds["pointwise"]]
    return {"network": name, "total_macs": total,
            **{f"{kind}_share": share(names) for kind, names in kinds.items()},
            "reached_today": share(dict(decomposable_layers(model))),
            "reached_pointwise": share(dict(decomposable_layers(model, pointwise=True)))}


def decaying_spectra(model: nn.Module, layers, scheme: str, decay: float) -> None:
    """Every layer's matrix (in its scheme's view) gets singular values s_1 * i^-decay, with
    its singular vectors and Frobenius norm kept."""
    with torch.no_grad():
        for _, layer in layers:
            weight = weight_as_conv(layer.weight)
            view = geometry.scheme(layer_scheme(layer, scheme)).views[0]
            M = view.to_matrix(weight.double())
            U, S, Vh = torch.linalg.svd(M, full_matrices=False)
            shape = torch.arange(1, S.shape[-1] + 1, dtype=torch.float64) ** -decay
            S = shape * S.norm() / shape.norm()
            weight.copy_(view.to_weight((U * S) @ Vh, weight.shape))


def budget_row(name: str, decay: float, rounds: int) -> dict:
    model = network(name)
    x = torch.randn(INPUT)
    layers = decomposable_layers(model, pointwise=True)
    decaying_spectra(model, layers, "channel", decay)
    dense = copy.deepcopy(model)
    started = time.perf_counter()
    report = decompose_model(model, "channel", target_speedup=2, example_input=x,
                             pointwise=True)
    row = {"network": name, "decompose_s": time.perf_counter() - started,
           "flops_speedup": report.flops_speedup, "macs_before": report.conv_macs_before,
           "macs_after": report.conv_macs_after, "layers": len(report.layers),
           "kept_dense": sum(l.kept_dense for l in report.layers),
           "params_before": sum(p.numel() for p in dense.parameters()),
           "params_after": sum(p.numel() for p in model.parameters())}
    for runtime in ("torch", "onnxruntime"):
        before, after = LatencyMeter(runtime, rounds=rounds).seconds([dense, model], x)
        row[f"{runtime}_ms"] = (1e3 * before.median, 1e3 * after.median)
        row[f"{runtime}_speedup"] = before.median / after.median
    return row


def reach_markdown(rows) -> str:
    lines = ["| network | conv + linear GMACs | k x k, groups 1 | 1x1 + linear | grouped / "
             "depthwise | acted on today | with pointwise=True |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['total_macs'] / 1e9:.3f} | "
                     + " | ".join(f"{100 * r[k]:.1f}%" for k in (
                         "kxk_share", "pointwise_share", "grouped_share", "reached_today",
                         "reached_pointwise")) + " |")
    return "\n".join(lines) + "\n"


def budget_markdown(rows) -> str:
    lines = ["| network | FLOP speed-up | GMACs | layers (kept dense) | params (M) "
             "| torch ms | ONNX Runtime ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | **{r['flops_speedup']:.2f}x** | {r['macs_before'] / 1e9:.3f}"
            f" -> {r['macs_after'] / 1e9:.3f} | {r['layers']} ({r['kept_dense']}) "
            f"| {r['params_before'] / 1e6:.2f} -> {r['params_after'] / 1e6:.2f} "
            f"| {r['torch_ms'][0]:.1f} -> {r['torch_ms'][1]:.1f} "
            f"(**{r['torch_speedup']:.2f}x**) | {r['onnxruntime_ms'][0]:.1f} -> "
            f"{r['onnxruntime_ms'][1]:.1f} (**{r['onnxruntime_speedup']:.2f}x**) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", choices=("reach", "budget"))
    parser.add_argument("--decay", type=float, default=0.7,
                        help="the spectra's power law: s_i = s_1 * i^-decay (budget table)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--results", default="docs/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = os.path.join(args.results, "imagenet_pointwise.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    wait = os.environ.get("OMP_WAIT_POLICY")
    command = (f"OMP_WAIT_POLICY={wait} " if wait else "") + \
        "python scripts/imagenet_pointwise.py " + " ".join(argv or sys.argv[1:])
    for table in args.tables:
        load, started = os.getloadavg()[0], time.perf_counter()
        if table == "reach":
            rows = [reach_row(name) for name in NETWORKS]
        else:
            rows = [budget_row(name, args.decay, args.rounds) for name in BUDGET_NETWORKS]
        results[table] = {"rows": rows, "command": command, "decay": args.decay,
                          "threads": args.threads, "wall_s": time.perf_counter() - started,
                          "load_average_at_start": load, "load_average_at_end": os.getloadavg()[0],
                          "machine": f"{os.cpu_count()} CPU cores "
                                     f"({platform.processor() or platform.machine()})",
                          "torch": torch.__version__}
    os.makedirs(args.results, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    text = ""
    for table, render in (("reach", reach_markdown), ("budget", budget_markdown)):
        if table in results:
            meta = results[table]
            text += (f"## {table}\n\n`{meta['command']}` ({meta['wall_s']:.0f} s on "
                     f"{meta['machine']}, {meta['threads']} threads, 1-minute load average "
                     f"{meta['load_average_at_start']:.1f} at the start, "
                     f"{meta['load_average_at_end']:.1f} at the end)\n\n" + render(meta["rows"])
                     + "\n")
    with open(os.path.join(args.results, "imagenet_pointwise.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
