"""Where the CPU warm start pays: one matrix per shape, projected at energy 0.3, 0.5, 0.7 and 0.9
(so that its rank, the block p the warm solver iterates on, runs from about 0.1 k to 0.8 k),
moved by 2e-3 of its norm as a TRP step moves it, then projected again warm from the first
projection's basis and cold (``lowrank_project_groups``, one thread, median of 7 calls; 3 at
k >= 512). What each warm call did (``torch.ops.trp.warm_start_counts``) is recorded, so a run
shows both the gain of accepted solves and the cost of starts the solver turns down. The limit
of its leading block (csrc/cpu/warm_eigen.cpp, leading_block) was chosen from this table
(docs/svd_paths.md, "The CPU warm solver").

    python bench/warm_block_sizes.py --out RESULT.json
    python bench/warm_block_sizes.py --table RESULT.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gpu_env import machine_info
from gpu_timings import one_step_later
from result_script import measure_or_table
from trp_kernels.ops.svd import lowrank_project_groups

SHAPES = [(64, 576), (128, 1152), (256, 2304), (512, 4608), (192, 192), (384, 384), (768, 768)]
ENERGIES = (0.3, 0.5, 0.7, 0.9)
OUTCOMES = ("accepted", "bad_start", "no_gap", "not_certified")


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def measure(args) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for m, n in SHAPES:
        W0 = torch.randn(1, m, n, generator=g)
        k = min(m, n)
        calls = 3 if k >= 512 else 7
        for energy in ENERGIES:
            lows, _, ranks, bases = lowrank_project_groups([W0], energy=energy, check_finite=False,
                                                           return_basis=True)
            W = one_step_later(lows[0])
            project = torch.ops.trp.lowrank_project_groups
            torch.ops.trp.warm_start_counts(True)
            warm = median_ms(lambda: project([W], energy, None, None, [bases[0]]), calls)
            counts = torch.ops.trp.warm_start_counts(True)
            cold = median_ms(lambda: project([W], energy, None, None, None), calls)
            rank = int(ranks[0][0])
            outcome = OUTCOMES[max(range(4), key=lambda i: counts[i])]
            rows.append({"m": m, "n": n, "k": k, "energy": energy, "rank": rank,
                         "rank_share": rank / k, "warm_ms": warm, "cold_ms": cold,
                         "outcome": outcome, "warm_start_counts": counts})
            print(f"{m} x {n} energy {energy}: rank {rank} ({rank / k:.2f} k) warm {warm:.2f} "
                  f"ms cold {cold:.2f} ms ({cold / warm:.2f}x), {outcome}", flush=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)


def table(path: str) -> None:
    with open(path) as f:
        rows = json.load(f)["rows"]
    print("| matrix | energy | rank | warm | cold | cold / warm | warm solve |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['m']} x {r['n']} | {r['energy']} | {r['rank']} ({r['rank_share']:.2f} k) | "
              f"{r['warm_ms']:.2f} ms | {r['cold_ms']:.2f} ms | {r['cold_ms'] / r['warm_ms']:.2f}x | "
              f"{r['outcome'].replace('_', ' ')} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="print the table of this result file")
    measure_or_table(parser, measure, table)
