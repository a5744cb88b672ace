"""Prints a benchmark result file as one table per case: each impl's median and its speed-up
over the slowest impl of the case. Reads both formats under bench/results/: pytest-benchmark
JSON (bench_*.py) and the GPU timing JSON of bench/gpu_timings.py ({"machine", "measurements"}).

    python bench/summarize.py RESULT.json [...]
    python bench/summarize.py GPU_TIMINGS.json --headline   # the short form for summary.txt
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict


def rows(path):
    """(machine info, {case: [(impl, median seconds)]}) of either format."""
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    if "measurements" in data:  # bench/gpu_timings.py
        for m in data["measurements"]:
            if "median_ms" in m:
                groups[f"{m['group']}:{m['case']}"].append((m["impl"], m["median_ms"] / 1e3))
        return data.get("machine") or {}, groups
    for b in data["benchmarks"]:
        params = b.get("params") or {}
        groups[b.get("group") or params.get("case", b["name"])].append(
            (params.get("impl", b["name"]), b["stats"]["median"])
        )
    return data.get("machine_info", {}).get("trp", {}), groups


def print_tables(path):
    machine, groups = rows(path)
    print(f"# {path}: {machine}")
    for case in sorted(groups):
        entries = sorted(groups[case], key=lambda e: e[1])
        slowest = max(t for _, t in entries)
        cells = "  ".join(f"{impl} {t * 1e3:.3f} ms ({slowest / t:.1f}x)" for impl, t in entries)
        print(f"{case:<34} {cells}")


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def print_headline(path):
    """GPU timings only: the step and projection tables, and the conv impls in aggregate."""
    with open(path) as f:
        data = json.load(f)
    machine = data.get("machine") or {}
    print(f"== timings on {machine.get('device')} (driver {machine.get('driver')}, torch "
          f"{machine.get('torch')}, CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')})")
    measured = [m for m in data.get("measurements", []) if "median_ms" in m]
    errors = [m for m in data.get("measurements", []) if "error" in m]
    by_case = defaultdict(dict)
    for m in measured:
        by_case[(m["group"], m["case"])][m["impl"]] = m
    for group in ("step", "svd"):
        for (g, case), impls in sorted(by_case.items()):
            if g == group:
                cells = "  ".join(f"{i} {m['median_ms']:.3f}" for i, m in impls.items())
                print(f"{group} {case:<24} ms: {cells}")
    conv = defaultdict(lambda: defaultdict(list))
    for (g, case), impls in by_case.items():
        if g != "conv" or not impls:
            continue
        m = next(iter(impls.values()))
        key = f"{m['dtype']}-{'fwdbwd' if m['backward'] else 'fwd'}"
        t = {i: v["median_ms"] for i, v in impls.items()}
        if "fused" in t and "two_convs" in t:
            conv[key]["two_convs/fused"].append(t["two_convs"] / t["fused"])
        lowrank = [t[i] for i in ("fused", "two_convs", "dense") if i in t]
        if "auto" in t and lowrank:
            conv[key]["auto/best"].append(t["auto"] / min(lowrank))
        if "dense" in t and "two_convs" in t:
            conv[key]["two_convs/dense"].append(t["two_convs"] / t["dense"])
    for key in sorted(conv):
        cells = "  ".join(f"{name} {geomean(v):.2f} (n={len(v)})" for name, v in conv[key].items())
        print(f"conv resnet18 b128 {key:<14} geomean ratios: {cells}")
    print(f"timings: {len(measured)} measured, {len(errors)} failed")
    for m in errors[:5]:
        print(f"  failed {m['group']} {m['case']} {m['impl']}: {m['error']}")


def main(argv):
    headline = "--headline" in argv
    for path in [a for a in argv if a != "--headline"]:
        (print_headline if headline else print_tables)(path)


if __name__ == "__main__":
    main(sys.argv[1:])
