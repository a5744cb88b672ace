"""The paper's comparison on digits: baseline vs TRP (with and without the nuclear term) vs
direct decomposition vs low-rank training from scratch, in the four low-rank formats (channel,
spatial, tucker2, decoupled), several seeds.

Every row is a ``python -m trp_kernels train`` run (called in-process). Direct decomposition
and low-rank training are given the speed-up that TRP+Nu reached with the same scheme and seed
(or a little more), so the question "does TRP beat direct decomposition at equal or higher
speed-up?" is answered at equal cost:
  decomp   the trained baseline (``--init``), decomposed at the largest energy whose conv FLOP
           speed-up is at least TRP+Nu's; without fine-tuning, and fine-tuned for 5 epochs and
           for as many epochs as TRP trains in all.
  lowrank  the largest rank fraction (in 1/64 steps; for tucker2 one fraction for both ranks)
           whose speed-up is at least TRP+Nu's, with each orthogonality penalty ("so" and
           ELRT's double-soft "dso").
With ``--common-speedup X`` every format also trains low-rank from scratch (its default
penalty) at the largest rank fraction whose speed-up is at least X, the same X for all: the rows
that compare the formats with each other at equal cost (``--no-matched`` runs only those).
A second table gives TRP's time cost per projection period (channel scheme, first seed): the
median CPU time of an epoch's training steps (evaluation excluded) against the baseline's. CPU
time, because wall time on cores shared with other jobs measures the other jobs.

    python scripts/compare_digits.py                  # seeds 0 1 2; over an hour on 2 cores

Seeds may run in parallel processes (``--seeds 0`` and ``--seeds 1`` with the same --runs and
another --results); a last call with all seeds then only reads the finished runs. ``--periods``
with no value leaves out the period table.

Runs go to --runs (one directory each; a finished run is reused, an interrupted one resumed),
the table and every run's figures to --results (compare_digits.md / .json).

``--model mobilenetv2`` runs the same protocol on the MobileNetV2-style network, whose 1x1 convs
only the pointwise scheme factorises (its default --schemes); its table goes to
compare_digits_mobilenetv2.md / .json, beside ResNet-20's (give it its own --runs):

    python scripts/compare_digits.py --model mobilenetv2 --periods --runs runs/compare-mobilenet
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from trp_kernels.cli import main as cli
from trp_kernels.training.data import load_digits
from trp_kernels.compression import decompose_model
from trp_kernels.compression.export import load_model
from trp_kernels.schemes.costs import conv_macs
from trp_kernels.rank_training.elrt import make_lowrank
from trp_kernels.models import create_model
from trp_kernels.compression.selection import counts_linear
from trp_kernels.training import DIGITS_STAGE_STRIDES, SCHEMES, TRAIN_MODELS, TrainConfig

ARCH = {"in_channels": 1, "stage_strides": list(DIGITS_STAGE_STRIDES)}
EXAMPLE = torch.zeros(1, 1, 8, 8)


class MissingRun(Exception):
    """--read-only: a run the table needs has not finished."""


READ_ONLY = False   # set by --read-only
MODEL = "resnet20"  # set by --model
MODEL_NAMES = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "resnet56": "ResNet-56",
               "mobilenetv2": "the MobileNetV2-style network (trp_kernels.models.mobilenetv2)"}
# The schemes each model is compared in: the k x k ones where its FLOPs are k x k convs,
# pointwise where they are 1x1 convs.
DEFAULT_SCHEMES = {"mobilenetv2": ["pointwise"]}


def train(out: str, *args: str) -> dict:
    """The report of the run in ``out``: read if finished, resumed if interrupted, else run
    (with --read-only: MissingRun instead)."""
    report = os.path.join(out, "report.json")
    if not os.path.exists(report) and READ_ONLY:
        raise MissingRun(out)
    if not os.path.exists(report):
        resume = ["--resume"] if os.path.exists(os.path.join(out, "checkpoint.pt")) else []
        command = ["train", "--out", out, "--no-progress", "--model", MODEL, *args, *resume]
        print("$ python -m trp_kernels " + " ".join(command), flush=True)
        code = cli(command)
        if code:
            sys.exit(f"run {out} failed with exit code {code}")
    with open(report) as f:
        return json.load(f)


def matched_energy(baseline_model: str, scheme: str, target: float) -> float:
    """The largest energy whose decomposition of the baseline has speed-up >= target."""
    dense = load_model(baseline_model)
    linear = counts_linear(scheme, False)        # the trainer's MAC count for the scheme
    dense_macs = conv_macs(dense, EXAMPLE, linear)

    def speedup(energy):
        model = copy.deepcopy(dense)
        decompose_model(model, scheme, energy=energy)   # conv1 stays dense, as in the trainer
        return dense_macs / conv_macs(model, EXAMPLE, linear)

    low, high = 1e-4, 1.0          # speedup falls as the energy grows
    if speedup(low) < target:
        return low
    for _ in range(20):
        middle = (low + high) / 2
        low, high = (middle, high) if speedup(middle) >= target else (low, middle)
    return math.floor(low * 1e4) / 1e4   # rounding down keeps speedup >= target


def matched_rank_fraction(scheme: str, target: float) -> float:
    """The largest rank fraction k/64 whose low-rank model has speed-up >= target."""
    linear = counts_linear(scheme, False)
    dense_macs = conv_macs(create_model(MODEL, **ARCH), EXAMPLE, linear)
    best = 1 / 64
    for k in range(1, 65):
        model = create_model(MODEL, **ARCH)
        make_lowrank(model, scheme, rank=k / 64)
        if dense_macs / conv_macs(model, EXAMPLE, linear) >= target:
            best = k / 64
    return best


def summary(rows: list[dict]) -> dict:
    def stats(key):
        values = [r[key] for r in rows]
        return {"mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"test_accuracy": stats("test_accuracy"), "flops_speedup": stats("flops_speedup"),
            "params": stats("params"), "train_cpu_s": stats("train_cpu_s")}


def figures(report: dict, **extra) -> dict:
    return {"seed": report["config"]["seed"], "test_accuracy": report["test_accuracy"],
            "dense_test_accuracy": report["dense_test_accuracy"],
            "flops_speedup": report["flops_speedup"], "params": report["params"],
            "train_cpu_s": sum(h["train_cpu_s"] for h in report["history"]),
            "ranks": [layer["rank"] for layer in report["layers"]], **extra}


def period_row(report: dict) -> dict:
    history = report["history"]
    epoch_s = statistics.median(h["train_cpu_s"] for h in history)
    trp_s = statistics.median(h["trp_cpu_s"] for h in history)
    return {"period": report["config"]["period"],
            "nuclear_weight": report["config"]["nuclear_weight"],
            "epoch_train_cpu_s": epoch_s, "epoch_trp_cpu_s": trp_s, "trp_share": trp_s / epoch_s,
            "test_accuracy": report["test_accuracy"], "flops_speedup": report["flops_speedup"]}


def period_markdown(rows: list[dict], baseline_epoch_s: float) -> str:
    lines = [
        f"TRP's cost per projection period (channel scheme, seed {rows[0]['seed']}): median "
        f"over epochs of the CPU time of one epoch's training steps and of the part spent in "
        f"TRP's hooks (one thread). The baseline's steps take {baseline_epoch_s:.2f} CPU s "
        f"an epoch.",
        "",
        "| period | nuclear weight | CPU s / epoch | of which TRP | test accuracy "
        "| conv FLOP speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['period']} | {r['nuclear_weight']:g} | {r['epoch_train_cpu_s']:.2f} "
                     f"| {r['epoch_trp_cpu_s']:.3f} ({100 * r['trp_share']:.1f}%) "
                     f"| {100 * r['test_accuracy']:.2f}% | {r['flops_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def markdown(table: list[dict], command: str, meta: dict) -> str:
    lines = [
        f"Digits (1,437 train / 360 test images), {MODEL_NAMES[MODEL]} with stage strides "
        f"{tuple(DIGITS_STAGE_STRIDES)}, {meta['epochs']} epochs, seeds "
        f"{', '.join(map(str, meta['seeds']))}; mean ± std over seeds. Produced by "
        f"`{command}` ({meta['wall_s'] / 60:.0f} min for this call, which reads the runs "
        f"already finished in --runs instead of repeating them, on {meta['machine']} shared "
        f"with other jobs: 1-minute load average {meta['load_average_at_start'][0]:.1f} at the "
        f"start, {meta['load_average_at_end'][0]:.1f} at the end).",
        "",
    ]
    if meta["missing_runs"]:
        lines += ["", f"Read-only call: {len(meta['missing_runs'])} runs of the protocol had not "
                      f"finished and are left out (the rows that depend on them too); the "
                      f"seeds column says how many seeds each row averages. The JSON file "
                      f"lists the missing runs."]
    lines += [
        "",
        "| method | scheme | seeds | test accuracy | conv FLOP speed-up | params "
        "| training CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        s = row["summary"]
        lines.append(
            f"| {row['label']} | {row['scheme']} | {len(row['runs'])} "
            f"| {100 * s['test_accuracy']['mean']:.2f} ± {100 * s['test_accuracy']['std']:.2f}% "
            f"| {s['flops_speedup']['mean']:.2f} ± {s['flops_speedup']['std']:.2f}x "
            f"| {s['params']['mean']:,.0f} | {s['train_cpu_s']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def matched_rows(args, scheme, seed, seeded, out, baseline_model, add) -> None:
    """One seed's rows of one format: TRP, TRP+Nu, and decomposition and low-rank training
    matched to TRP+Nu's speed-up."""
    trp = train(out(f"trp-{scheme}"), "--scheme", scheme, "--nuclear-weight", "0", *seeded)
    add("TRP", scheme, figures(trp))
    nu = train(out(f"trp-nu-{scheme}"), "--scheme", scheme, *seeded)
    add("TRP+Nu", scheme, figures(nu))
    target = nu["flops_speedup"]
    energy = matched_energy(baseline_model, scheme, target)
    for epochs in (0, *args.finetune_epochs):
        d = train(out(f"decomp-ft{epochs}-{scheme}"), "--method", "decomp", "--scheme", scheme,
                  "--init", baseline_model, "--energy", str(energy),
                  "--finetune-epochs", str(epochs), "--seed", str(seed))
        label = "decomposition" + (f" + {epochs} epochs fine-tuning" if epochs else "")
        add(label, scheme, figures(d, energy=energy, finetune_epochs=epochs))
    fraction = matched_rank_fraction(scheme, target)
    for kind in ("so", "dso"):
        low = train(out(f"lowrank-{kind}-{scheme}"), "--method", "lowrank", "--scheme", scheme,
                    "--rank", str(fraction), "--penalty-kind", kind, *seeded)
        add(f"low-rank from scratch (ELRT), {kind} penalty", scheme,
            figures(low, rank_fraction=fraction, penalty_kind=kind))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--finetune-epochs", type=int, nargs="+",
                        default=[TrainConfig.finetune_epochs, TrainConfig.epochs],
                        help="fine-tuning lengths of the decomposition rows (0 is always run)")
    parser.add_argument("--periods", type=int, nargs="*", default=[1, 2, 5, 10, 20])
    parser.add_argument("--model", default="resnet20", choices=TRAIN_MODELS)
    parser.add_argument("--schemes", nargs="+", default=None, choices=SCHEMES,
                        help="(default: the four k x k schemes; pointwise for mobilenetv2)")
    parser.add_argument("--common-speedup", type=float, default=None,
                        help="also train every format low-rank from scratch at this speed-up")
    parser.add_argument("--no-matched", action="store_true",
                        help="leave out the rows matched to TRP+Nu (baseline and "
                             "--common-speedup rows only)")
    parser.add_argument("--runs", default="runs/compare-digits")
    parser.add_argument("--results", default="docs/results")
    parser.add_argument("--read-only", action="store_true",
                        help="train nothing: tabulate the finished runs, leaving out the rows "
                             "whose runs (or the runs they are matched to) have not finished")
    args = parser.parse_args(argv)
    global READ_ONLY, MODEL
    READ_ONLY, MODEL = args.read_only, args.model
    if args.schemes is None:
        args.schemes = DEFAULT_SCHEMES.get(MODEL, [s for s in SCHEMES if s != "pointwise"])
    missing: list[str] = []
    started, load_at_start = time.perf_counter(), os.getloadavg()
    load_digits()   # fail early, before any run, if scikit-learn's data is unavailable
    common = ["--epochs", str(args.epochs)]
    table = {}

    def add(label, scheme, figures_):
        table.setdefault((label, scheme), []).append(figures_)

    for seed in args.seeds:
        def out(name):
            return os.path.join(args.runs, f"{name}-seed{seed}")

        seeded = [*common, "--seed", str(seed)]
        # the scheme names the layers the report lists: those the other rows act on
        base = train(out("baseline"), "--method", "baseline", "--scheme", args.schemes[0],
                     *seeded)
        add("baseline", "-", figures(base))
        baseline_model = os.path.join(out("baseline"), "model.pt")
        for scheme in () if args.no_matched else args.schemes:
            try:
                matched_rows(args, scheme, seed, seeded, out, baseline_model, add)
            except MissingRun as exc:
                missing.append(str(exc))
        for scheme in args.schemes if args.common_speedup else ():
            fraction = matched_rank_fraction(scheme, args.common_speedup)
            try:
                low = train(out(f"common{args.common_speedup:g}-lowrank-{scheme}"), "--method",
                            "lowrank", "--scheme", scheme, "--rank", str(fraction), *seeded)
            except MissingRun as exc:
                missing.append(str(exc))
                continue
            add(f"low-rank from scratch (ELRT) at >= {args.common_speedup:g}x", scheme,
                figures(low, rank_fraction=fraction))

    seed = args.seeds[0]
    baseline_epoch_s = statistics.median(
        h["train_cpu_s"]
        for h in train(os.path.join(args.runs, f"baseline-seed{seed}"))["history"])
    periods: list[dict] = []
    for period in args.periods:
        for weight in ("0", str(TrainConfig.nuclear_weight)):
            name = f"trp-{'nu-' if weight != '0' else ''}channel-seed{seed}"
            if period != 1:
                name = f"period{period}-" + name
            try:
                report = train(os.path.join(args.runs, name), "--nuclear-weight", weight,
                               "--period", str(period), *common, "--seed", str(seed))
            except MissingRun as exc:
                missing.append(str(exc))
                continue
            periods.append({"seed": seed, **period_row(report)})

    rows = [{"label": label, "scheme": scheme, "summary": summary(runs), "runs": runs}
            for (label, scheme), runs in table.items()]
    order = {"-": 0, **{s: i + 1 for i, s in enumerate(SCHEMES)}}
    rows.sort(key=lambda r: order[r["scheme"]])
    command = "python scripts/compare_digits.py" + (
        f" {' '.join(argv)}" if argv else (" " + " ".join(sys.argv[1:])).rstrip())
    meta = {"model": MODEL, "seeds": args.seeds, "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs,
            "wall_s": time.perf_counter() - started, "command": command,
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "torch": torch.__version__, "missing_runs": missing}
    os.makedirs(args.results, exist_ok=True)
    text = markdown(rows, command, meta)
    if periods:
        text += "\n" + period_markdown(periods, baseline_epoch_s)
    stem = "compare_digits" + ("" if MODEL == "resnet20" else f"_{MODEL}")
    with open(os.path.join(args.results, f"{stem}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "periods": periods,
                   "baseline_epoch_train_cpu_s": baseline_epoch_s}, f, indent=2)
    with open(os.path.join(args.results, f"{stem}.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
