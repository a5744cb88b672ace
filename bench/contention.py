"""How steady is a latency on this CPU? One model's forward pass, called many times in a row, in
fresh processes that differ only in torch's threads and OpenMP wait policy (fixed when a process
starts): the best, median and worst call, and the machine's load. On a CPU shared with other
jobs, spin-waiting OpenMP threads turn the load into waits at every parallel op's barrier; the
spread between the best and the median call shows how far a timing measures the load rather
than the model (docs/compression.md, "Measured choice").

    python bench/contention.py --out RESULT.json [--calls 40]
    python bench/contention.py --table RESULT.json

pytorchcv is a benchmark dependency only (``pip install pytorchcv --no-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from result_script import measure_or_table

MODEL = "pytorchcv.models.resnet:resnet18"
SETTINGS = [(2, None), (2, "PASSIVE"), (1, None)]      # (threads, OMP_WAIT_POLICY)

CHILD = """
import importlib, json, os, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
module, _, name = sys.argv[2].partition(":")
model = getattr(importlib.import_module(module), name)().eval()
x = torch.randn(1, 3, 224, 224)
times = []
with torch.inference_mode():
    for _ in range(3):
        model(x)
    for _ in range(int(sys.argv[3])):
        start = time.perf_counter()
        model(x)
        times.append(1e3 * (time.perf_counter() - start))
print(json.dumps(times))
"""


def measure(args) -> None:
    results = {"model": MODEL, "calls": args.calls, "cpus": os.cpu_count(), "settings": [],
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for threads, policy in SETTINGS:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), MODEL, str(args.calls)],
                             env=env, capture_output=True, text=True, check=True).stdout
        times = sorted(json.loads(out.splitlines()[-1]))
        results["settings"].append({"threads": threads, "omp_wait_policy": policy,
                                    "load_1min": [load, os.getloadavg()[0]], "times_ms": times})
        print(_row(results["settings"][-1]), file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


def _row(s) -> str:
    t = s["times_ms"]
    return (f"| {s['threads']} | {s['omp_wait_policy'] or 'default'} | {t[0]:.0f} "
            f"| {t[len(t) // 2]:.0f} | {t[-1]:.0f} | {t[len(t) // 2] / t[0]:.2f} "
            f"| {s['load_1min'][0]:.1f} to {s['load_1min'][1]:.1f} |")


def table(path) -> None:
    with open(path) as f:
        data = json.load(f)
    print(f"{data['model']}, batch 1, {data['calls']} calls per setting, {data['cpus']} cores, "
          f"{data['started']}\n")
    print("| threads | OMP_WAIT_POLICY | best ms | median ms | worst ms | median / best "
          "| 1-minute load |")
    print("|---|---|---|---|---|---|---|")
    for s in data["settings"]:
        print(_row(s))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--table", help="print the table of this result file")
    measure_or_table(parser, measure, table)


if __name__ == "__main__":
    main()
