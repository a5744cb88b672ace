"""Prints the markdown table of a bench_compress.py JSON: per model, scheme and runtime, each
impl's median latency, its speed-up over dense, its conv FLOP speed-up and the fraction of the
FLOP speed-up it realises; then the two goals checked. Several JSONs (e.g. one pytest process
per network, TRP_BENCH_MODELS) are read as one run.
Usage: python bench/summarize_compress.py RESULT.json [RESULT.json ...]"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

IMPLS = ("dense", "energy0.9", "budget2x", "budget3x", "measured")


def stderr(stats) -> float:
    """Standard error of the median, from the interquartile range (as
    trp_kernels.compression.latency)."""
    return 1.2533 * stats["iqr"] / 1.349 / math.sqrt(stats["rounds"])


def interleaved(extra) -> str:
    """The measured choice's own final check, dense and chosen model timed in interleaved
    rounds: unlike two benchmarks run minutes apart, immune to the machine's drift."""
    if "measured_before" not in extra:
        return "no interleaved check recorded"
    return (f"in the choice's interleaved check {1e3 * extra['measured_after']:.2f} vs "
            f"{1e3 * extra['measured_before']:.2f} ms dense")


def load(paths):
    """(the first JSON's data, case -> impl -> (stats, extra_info)) over all ``paths``."""
    first, cases = None, defaultdict(dict)
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        first = first or data
        for b in data["benchmarks"]:
            info = b["extra_info"]
            if info["impl"] in cases[info["case"]]:
                raise ValueError(f"{path}: {info['case']} {info['impl']} is in two results")
            cases[info["case"]][info["impl"]] = (b["stats"], info)
    return first, cases


def main(paths):
    data, cases = load(paths)
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"torch {machine.get('trp', {}).get('torch')}, "
          f"{machine.get('trp', {}).get('cpu_threads')} threads.\n")
    print("| model, scheme, batch | runtime | dense ms | "
          + " | ".join(f"{impl}: ms, latency / FLOP speed-up" for impl in IMPLS[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(IMPLS) - 1))
    goals = []
    for case in sorted(cases):
        impls = cases[case]
        if "dense" not in impls:
            continue
        dense, info = impls["dense"]
        cells = []
        for impl in IMPLS[1:]:
            if impl not in impls:
                cells.append("-")
                continue
            stats, extra = impls[impl]
            latency = dense["median"] / stats["median"]
            kept = len(extra["kept_dense"])
            cells.append(f"{1e3 * stats['median']:.1f}: **{latency:.2f}x** / "
                         f"{extra['flops_speedup']:.2f}x ({latency / extra['flops_speedup']:.2f})"
                         + (f", {kept}/{extra['layers']} dense" if kept else ""))
            if impl == "measured":
                noise = 2 * math.hypot(stderr(stats), stderr(dense))
                goals.append((f"{case} measured >= dense within noise",
                              stats["median"] <= dense["median"] + noise,
                              f"{1e3 * stats['median']:.2f} vs {1e3 * dense['median']:.2f} "
                              f"ms (noise {1e3 * noise:.2f}); "
                              + interleaved(extra)))
            if impl == "energy0.9" and info["model"] == "resnet18" \
                    and info["scheme"] == "channel" and info["runtime"] == "onnxruntime":
                goals.append((f"{case} energy0.9 realises >= 0.75 of its FLOP speed-up",
                              latency >= 0.75 * extra["flops_speedup"],
                              f"{latency:.2f}x of {extra['flops_speedup']:.2f}x"))
        name = f"{info['model']} {info['scheme']} b{info['batch']}"
        print(f"| {name} | {info['runtime']} | {1e3 * dense['median']:.1f} | "
              + " | ".join(cells) + " |")
    print("\nIn parentheses: the fraction of the FLOP speed-up realised as latency speed-up.\n")
    for text, met, detail in goals:
        print(f"- {'met' if met else 'NOT met'}: {text} ({detail})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
