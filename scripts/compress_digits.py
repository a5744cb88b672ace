"""Compression you can judge, on the bundled digits: a trained dense ResNet-20 compressed to a
conv FLOP budget with ``python -m trp_kernels compress --data digits``, its ranks chosen by
energy and by accuracy, then fine-tuned; the held-out top-1 of the dense, the compressed and
the fine-tuned model, over fine-tuning seeds.

    python scripts/compress_digits.py            # baseline, then 2 selections x 5 seeds

1. ``python -m trp_kernels train --method baseline --out OUT/baseline`` (reused when its
   model.pt exists);
2. for each --select and --seed: ``python -m trp_kernels compress --model
   OUT/baseline/model.pt --data digits --target-speedup T --finetune-epochs N --select S
   --seed K --threads 1 --no-progress --out OUT/S-seedK``, its printed lines kept in
   OUT/S-seedK/output.txt (a finished run is read, not repeated);
3. the table: OUT.md and OUT.json.

The seed changes only what the compression draws at random: the batches of the fine-tuning
(and the random inputs of the latency timings). The selection by accuracy sweeps once; the
later seeds read the sweep from its cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time

from trp_kernels.cli import main as cli


def run(out: str, argv: list[str]) -> dict:
    """The report of the command ``argv`` writing to ``out``: read if it finished before, else
    run, with its printed lines kept in OUT/output.txt."""
    report = os.path.join(out, "report.json")
    if not os.path.exists(report):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            status = cli(argv)
        text = printed.getvalue()
        sys.stdout.write(text)
        if status != 0:
            raise SystemExit(f"{' '.join(argv)} exited with {status}")
        with open(os.path.join(out, "output.txt"), "w") as f:
            f.write(text)
    with open(report) as f:
        return json.load(f)


def mean_std(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}%"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/compress_digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--selects", nargs="+", default=["energy", "accuracy"])
    parser.add_argument("--target-speedup", dest="target", type=float, default=3.0)
    parser.add_argument("--finetune-epochs", dest="epochs", type=int, default=2)
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), os.getloadavg()[0]

    baseline = os.path.join(args.out, "baseline")
    if not os.path.exists(os.path.join(baseline, "model.pt")):
        run(baseline, ["train", "--method", "baseline", "--out", baseline, "--no-progress"])
    rows, runs = [], {}
    for select in args.selects:
        reports = []
        for seed in args.seeds:
            out = os.path.join(args.out, f"{select}-seed{seed}")
            command = ["compress", "--model", os.path.join(baseline, "model.pt"), "--data",
                       "digits", "--target-speedup", f"{args.target:g}", "--finetune-epochs",
                       str(args.epochs), "--select", select, "--seed", str(seed), "--threads",
                       "1", "--no-progress", "--out", out]
            reports.append(run(out, command))
            runs[f"{select}-seed{seed}"] = {"command": "python -m trp_kernels " + " ".join(command),
                                            "accuracy": reports[-1]["accuracy"],
                                            "flops_speedup": reports[-1]["flops_speedup"],
                                            "params": reports[-1]["params"]}
        acc = [r["accuracy"] for r in reports]
        rows.append((select, mean_std([a["dense"] for a in acc]),
                     mean_std([r["unadapted_accuracy"] for r in reports]),
                     mean_std([a["compressed"] for a in acc]),
                     mean_std([a["finetuned"] for a in acc]),
                     ", ".join(f"{100 * a['finetuned']:.2f}%" for a in acc),
                     f"{statistics.mean(r['flops_speedup'] for r in reports):.3f}x",
                     f"{reports[0]['params']:,}",
                     ", ".join(f"{r['time_s']:.0f}" for r in reports)))

    elapsed = time.perf_counter() - started
    lines = [
        f"# Compressing the digits ResNet-20 to {args.target:g}x, judged on held-out images",
        "",
        f"Produced by `python scripts/compress_digits.py` on {os.cpu_count()} CPU cores "
        f"({platform.machine()}) shared with other jobs (this call: {elapsed / 60:.1f} min, "
        f"reading the runs already finished in {args.out}; 1-minute load average {load:.1f} "
        f"at its start, {os.getloadavg()[0]:.1f} at its end; each run's own wall time is in "
        f"the table). The dense model: "
        f"`python -m trp_kernels train --method baseline`; every row compresses it with "
        f"`python -m trp_kernels compress --data digits --target-speedup {args.target:g} "
        f"--finetune-epochs {args.epochs} --select SELECT --seed SEED` (1,437 images to "
        f"calibrate and fine-tune, 360 held out); mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))}, which change the fine-tuning's batches only.",
        "",
        "| select | dense top-1 | compressed, dense BatchNorm statistics | compressed top-1 "
        "| fine-tuned top-1 | fine-tuned, per seed | conv FLOP speed-up | params "
        "| wall s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + [f"| {' | '.join(row)} |" for row in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"target_speedup": args.target, "finetune_epochs": args.epochs,
                   "seeds": args.seeds, "runs": runs, "elapsed_s": elapsed}, f, indent=2)
        f.write("\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
