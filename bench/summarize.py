"""Prints a benchmark result file as one table per case: each impl's median and its speed-up
over the slowest impl of the case (for bench/bench_warm_start.py also warm against cold, and
whether their ranks agree). Reads both formats under bench/results/: pytest-benchmark
JSON (bench_*.py) and the GPU timing JSON of bench/gpu_timings.py ({"machine", "measurements"}).

    python bench/summarize.py RESULT.json [...]
    python bench/summarize.py GPU_TIMINGS.json --headline   # the short form for summary.txt
    python bench/summarize.py GPU_TIMINGS.json --goals      # each speed goal: measured vs target
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


def interleaved_ratios(path) -> dict:
    """{case: {name: ratio}}: the ratios a pytest-benchmark run measured with impls timed in
    turn (extra_info keys ending in ``ratio_to_<impl>``, bench/bench_conv_host.py)."""
    with open(path) as f:
        data = json.load(f)
    out = defaultdict(dict)
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        for key, value in info.items():
            if "ratio_to_" in key:
                out[b.get("group") or info.get("case")][key] = value
    return out


def print_tables(path):
    machine, groups = rows(path)
    print(f"# {path}: {machine}")
    ratios = interleaved_ratios(path)
    for case in sorted(groups):
        entries = sorted(groups[case], key=lambda e: e[1])
        slowest = max(t for _, t in entries)
        cells = "  ".join(f"{impl} {t * 1e3:.3f} ms ({slowest / t:.1f}x)" for impl, t in entries)
        print(f"{case:<34} {cells}")
        if ratios.get(case):
            cells = "  ".join(f"{k} {v:.2f}" for k, v in sorted(ratios[case].items()))
            print(f"{'':<34} interleaved: {cells}")
    for line in warm_start_lines(path):
        print(line)


def cudnn_pair(t: dict):
    """The two-cuDNN-conv baseline of a conv case: the faster of two_convs and two_convs_r8 (its
    rank padded to a multiple of 8), whichever were measured; None if neither."""
    times = [t[i] for i in ("two_convs", "two_convs_r8") if i in t]
    return min(times) if times else None


def warm_start_lines(path) -> list[str]:
    """bench/bench_warm_start.py's cases: warm against cold (median time ratio), whether every
    round's layer ranks were the same, and the CPU kernel's warm-start outcomes."""
    with open(path) as f:
        data = json.load(f)
    by_case = defaultdict(dict)
    for b in data.get("benchmarks", []):
        params, info = b.get("params") or {}, b.get("extra_info") or {}
        if "ranks" in info and params.get("impl") in ("warm", "cold"):
            by_case[b["group"]][params["impl"]] = (b["stats"]["median"], info)
    out = []
    for case, impls in sorted(by_case.items()):
        if set(impls) != {"warm", "cold"}:
            continue
        (warm, warm_info), (cold, cold_info) = impls["warm"], impls["cold"]
        same = warm_info["ranks"] == cold_info["ranks"]
        counts = warm_info.get("warm_start_counts", [])
        outcome = ""
        if len(counts) >= 5:
            solves = sum(counts[:4])
            outcome = (f"; warm solves accepted {counts[0]} of {solves}, "
                       f"{counts[4] / max(counts[0], 1):.2f} power steps each")
        out.append(f"{case}: warm {warm * 1e3:.3f} ms, cold {cold * 1e3:.3f} ms, cold/warm "
                   f"{cold / warm:.2f}x; ranks {'identical' if same else 'DIFFERENT'} in "
                   f"{len(warm_info['ranks'])} rounds{outcome}")
    return out


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
    for group in ("step", "svd", "project", "pstep"):
        for (g, case), impls in sorted(by_case.items()):
            if g == group:
                # device time, with the host's time per call apart where it was measured
                cells = "  ".join(f"{i} {m['median_ms']:.3f}"
                                  + (f" (host {m['host_ms']:.3f})" if "host_ms" in m else "")
                                  for i, m in impls.items())
                print(f"{group} {case:<24} ms: {cells}")
    conv = defaultdict(lambda: defaultdict(list))
    for (g, case), impls in by_case.items():
        if g != "conv" or not impls:
            continue
        m = next(iter(impls.values()))
        key = f"{m['dtype']}-{'fwdbwd' if m['backward'] else 'fwd'}"
        t = {i: v["median_ms"] for i, v in impls.items()}
        if "fused" in t and cudnn_pair(t):
            conv[key]["two_convs/fused"].append(cudnn_pair(t) / t["fused"])
        for i, v in impls.items():
            if "host_ms" in v:
                conv[key][f"{i} host/device"].append(v["host_ms"] / v["median_ms"])
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


# The speed goals of the GPU kernels (docs/cuda_svd.md, docs/cuda_conv.md): (what, target).
SVD_OVER_TORCH_SVD = 10.0   # trp_jacobi at least 10x faster than batched torch.linalg.svd
SVD_OVER_GRAM = 2.0         # ... and 2x faster than float64 Gram + torch.linalg.eigh
RESNET20_CHANNEL_MS = 0.5   # the ResNet-20 channel projection under 0.5 ms
STEP_OVERHEAD = 1.15        # a TRP+Nu step at most 1.15x a plain step
FUSED_OVER_TWO_CONVS = 1.2  # the fused forward at least 1.2x faster than two cuDNN convs
AUTO_OVER_BEST = 1.05       # the automatic choice at most 5% slower than the best of three
# The goals of the warm start (docs/cuda_svd.md, "Warm start"), judged on the GPU time of
# bench/gpu_timings.py's project and pstep groups:
COLD_OVER_TORCH_SVD = 10.0  # ResNet-18/50: trp_jacobi-cold at least 10x torch.linalg.svd
COLD_OVER_GRAM = 2.0        # ... and 2x float64 Gram + torch.linalg.eigh
WARM_OVER_GRAM = 5.0        # ... trp_jacobi-warm at least 5x Gram + eigh
RESNET20_WARM_MS = 0.3      # the ResNet-20 channel projection, warm, under 0.3 ms
PSTEP_OVERHEAD = {"resnet20-b128": 1.10, "resnet18-imagenet-b128-bf16": 1.30}  # TRP+Nu / plain


def goal_rows(data) -> list[tuple[str, float, str, bool]]:
    """(goal, measured, target, met) for every case of every goal the file has timings for."""
    ms = defaultdict(dict)
    for m in data.get("measurements", []):
        if "median_ms" in m:
            ms[(m["group"], m["case"])][m["impl"]] = m["median_ms"]
    out = []
    for (group, case), t in sorted(ms.items()):
        if group == "svd" and "trp_jacobi" in t:
            if case.split("-")[0] in ("resnet18", "resnet50"):
                for base, target in (("torch_svd", SVD_OVER_TORCH_SVD), ("torch_gram", SVD_OVER_GRAM)):
                    if base in t:
                        ratio = t[base] / t["trp_jacobi"]
                        out.append((f"svd {case} {base}/trp_jacobi", ratio, f">= {target}", ratio >= target))
            if case == "resnet20-channel":
                out.append((f"svd {case} trp_jacobi ms", t["trp_jacobi"], f"< {RESNET20_CHANNEL_MS}",
                            t["trp_jacobi"] < RESNET20_CHANNEL_MS))
    plain = next((t["plain"] for (g, _), t in ms.items() if g == "step" and "plain" in t), None)
    for (group, case), t in sorted(ms.items()):
        if group == "step" and "plain" not in t and plain:
            for impl, v in t.items():
                ratio = v / plain
                out.append((f"step {case} {impl}/plain", ratio, f"<= {STEP_OVERHEAD}", ratio <= STEP_OVERHEAD))
    for (group, case), t in sorted(ms.items()):
        if group != "project":
            continue
        if case.split("-")[0] in ("resnet18", "resnet50"):
            for impl, base, target in (("trp_jacobi-cold", "torch_svd", COLD_OVER_TORCH_SVD),
                                       ("trp_jacobi-cold", "torch_gram", COLD_OVER_GRAM),
                                       ("trp_jacobi-warm", "torch_gram", WARM_OVER_GRAM)):
                if impl in t and base in t:
                    ratio = t[base] / t[impl]
                    out.append((f"project {case} {base}/{impl}", ratio, f">= {target}",
                                ratio >= target))
        if case == "resnet20-channel" and "trp_jacobi-warm" in t:
            out.append((f"project {case} trp_jacobi-warm ms", t["trp_jacobi-warm"],
                        f"< {RESNET20_WARM_MS}", t["trp_jacobi-warm"] < RESNET20_WARM_MS))
    plain_steps = {case: t["plain"] for (g, case), t in ms.items() if g == "pstep" and "plain" in t}
    for (group, case), t in sorted(ms.items()):
        model = next((m for m in plain_steps if case.startswith(m + "-")), None)
        if group != "pstep" or model is None:
            continue
        for impl, v in t.items():
            ratio, target = v / plain_steps[model], PSTEP_OVERHEAD[model]
            out.append((f"pstep {case} {impl}/plain", ratio, f"<= {target}", ratio <= target))
    for (group, case), t in sorted(ms.items()):
        if group != "conv":
            continue
        if case.endswith("-fwd") and "fused" in t and cudnn_pair(t):
            ratio = cudnn_pair(t) / t["fused"]
            out.append((f"conv {case} two_convs/fused", ratio, f">= {FUSED_OVER_TWO_CONVS}",
                        ratio >= FUSED_OVER_TWO_CONVS))
        best = [t[i] for i in ("fused", "two_convs", "dense") if i in t]
        if "auto" in t and best:
            ratio = t["auto"] / min(best)
            out.append((f"conv {case} auto/best", ratio, f"<= {AUTO_OVER_BEST}", ratio <= AUTO_OVER_BEST))
    return out


def print_goals(path):
    with open(path) as f:
        data = json.load(f)
    rows_ = goal_rows(data)
    for goal, value, target, met in rows_:
        print(f"{'met ' if met else 'MISS'} {goal:<62} {value:8.3f}  (target {target})")
    met = sum(r[3] for r in rows_)
    print(f"goals: {met} of {len(rows_)} cases met")


def main(argv):
    mode = print_tables
    if "--headline" in argv:
        mode = print_headline
    if "--goals" in argv:
        mode = print_goals
    for path in [a for a in argv if a not in ("--headline", "--goals")]:
        mode(path)


if __name__ == "__main__":
    main(sys.argv[1:])
