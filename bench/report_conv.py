"""Reads the low-rank conv benchmarks of a pytest-benchmark JSON (bench_conv.py) and prints, per
case, each implementation's median, the fused / two_convs speed-up, how close `auto` came to the
fastest, and the fraction of the H100 roofline the fastest reached; then, per conv stack, the
FLOP speed-up next to the latency speed-up; then the speed goals, met or not.

Usage: python bench/report_conv.py RESULT.json [--summary]   (--summary: the goals only)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

LOWRANK = ("fused", "two_convs", "dense")


def load(path):
    with open(path) as f:
        data = json.load(f)
    layers, stacks = defaultdict(dict), defaultdict(dict)
    for b in data["benchmarks"]:
        info, params = b.get("extra_info") or {}, b.get("params") or {}
        if "case" not in info or "impl" not in params or not b["name"].endswith("-cuda]"):
            continue
        table = stacks if "flop_speedup" in info else layers
        table[info["case"]][params["impl"]] = (b["stats"]["median"], info)
    return layers, stacks


def layer_rows(layers):
    rows = []
    for case, by_impl in sorted(layers.items()):
        times = {impl: t for impl, (t, _) in by_impl.items()}
        info = next(iter(by_impl.values()))[1]
        best_impl = min((i for i in LOWRANK if i in times), key=times.get)
        rows.append({
            "case": case, "info": info, "times": times, "best": best_impl,
            # against the faster two-cuDNN-conv baseline (the rank padded to 8 or not)
            "fused_speedup": (min(times[i] for i in ("two_convs", "two_convs_r8") if i in times)
                              / times["fused"] if "fused" in times else None),
            "auto_ratio": times["auto"] / times[best_impl] if "auto" in times else None,
            # roofline time of the lowrank algorithm over the fastest measured time
            "roofline_fraction": by_impl.get("fused", by_impl[best_impl])[1]["predicted_s"]
                                 / times[best_impl],
        })
    return rows


def print_layers(rows):
    print(f"{'case':<50} {'fused':>9} {'two_convs':>9} {'2c_r8':>9} {'dense':>9} {'auto':>9}  "
          f"{'f/2c':>5} {'auto/best':>9} {'roofline':>8}")
    for r in rows:
        t = r["times"]
        cells = " ".join(f"{t[i] * 1e6:9.1f}" if i in t else f"{'-':>9}"
                         for i in ("fused", "two_convs", "two_convs_r8", "dense", "auto"))
        speedup = f"{r['fused_speedup']:5.2f}" if r["fused_speedup"] else f"{'-':>5}"
        auto = f"{r['auto_ratio']:9.3f}" if r["auto_ratio"] else f"{'-':>9}"
        print(f"{r['case']:<50} {cells}  {speedup} {auto} {r['roofline_fraction']:8.2f}")
    print("(medians in us; f/2c = the faster of two_convs and two_convs_r8 / fused; "
          "roofline = H100 bound / fastest)")


def stack_rows(stacks):
    rows = []
    for case, by_impl in sorted(stacks.items()):
        times = {impl: t for impl, (t, _) in by_impl.items()}
        info = next(iter(by_impl.values()))[1]
        if "dense_model" not in times or "auto" not in times:
            continue
        latency = times["dense_model"] / times["auto"]
        rows.append({"case": case, "info": info, "times": times, "latency_speedup": latency,
                     "realised": latency / info["flop_speedup"]})
    return rows


def print_stacks(rows):
    print(f"\n{'stack':<36} {'dense ms':>9} {'auto ms':>9} {'FLOP x':>7} {'latency x':>9} "
          f"{'realised':>8}")
    for r in rows:
        print(f"{r['case']:<36} {r['times']['dense_model'] * 1e3:9.3f} "
              f"{r['times']['auto'] * 1e3:9.3f} {r['info']['flop_speedup']:7.2f} "
              f"{r['latency_speedup']:9.2f} {r['realised']:8.2f}")


def print_goals(layer_rows_, stack_rows_):
    print("\n== speed goals")
    target = [r for r in layer_rows_ if r["info"]["batch"] == 128 and not r["info"]["backward"]
              and r["info"]["dtype"] in ("bfloat16", "float32") and r["fused_speedup"]]
    misses = [r for r in target if r["fused_speedup"] < 1.2]
    print(f"fused >= 1.2x two_convs (b128 forward, bf16/fp32, both layouts, both schemes): "
          f"{len(target) - len(misses)}/{len(target)} met")
    for r in misses:
        print(f"  miss {r['case']}: {r['fused_speedup']:.2f}x")
    slow = [r for r in layer_rows_ if r["auto_ratio"] and r["auto_ratio"] > 1.05]
    counted = [r for r in layer_rows_ if r["auto_ratio"]]
    print(f"auto within 5% of the fastest impl: {len(counted) - len(slow)}/{len(counted)} cases")
    for r in slow:
        print(f"  miss {r['case']}: auto {r['auto_ratio']:.3f}x the fastest ({r['best']})")
    for r in stack_rows_:
        i = r["info"]
        if i["network"] == "resnet18" and i["scheme"] == "channel" and i["batch"] == 128:
            verdict = "met" if r["realised"] >= 0.7 else "missed"
            print(f"ResNet-18 channel stack b128 realises >= 0.7 of its FLOP speed-up: {verdict} "
                  f"({r['case']}: {r['latency_speedup']:.2f}x of {i['flop_speedup']:.2f}x = "
                  f"{r['realised']:.2f})")


def main(argv):
    summary = "--summary" in argv
    for path in [a for a in argv if a != "--summary"]:
        layers, stacks = load(path)
        lr, sr = layer_rows(layers), stack_rows(stacks)
        if not summary:
            print_layers(lr)
            print_stacks(sr)
        print_goals(lr, sr)


if __name__ == "__main__":
    main(sys.argv[1:])
