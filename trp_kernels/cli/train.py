"""``python -m trp_kernels train``: the trainer's options, and the run they configure
(docs/training.md, "The command line")."""

from __future__ import annotations

import argparse
import os
import sys

from ..rank_training import PENALTY_KINDS
from .. import training
from ..training import (DATASETS, LR_SCHEDULES, METHODS, SCHEMES, TRAIN_MODELS, TrainConfig,
                        TrainingDiverged, prepare, prepare_resume)
from ..compression.latency import timing_warning
from ..training.report import largest_spread
from .options import PROG, UsageError, model_kwargs, model_reference, rank, usage_error

EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 130


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = TrainConfig()
    # SUPPRESS: only the options given on the command line appear in the namespace, so a
    # resumed run can tell a repeated option from a changed one.
    p = subparsers.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a model (TRP by default) and write a compressed model and a report",
        description="Train with TRP, a decomposition baseline, or low-rank from scratch. "
                    "Defaults: the main job (digits, ResNet-20, TRP+Nu, channel scheme).")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", metavar="DATA",
                   help=f"{', '.join(DATASETS)}, a folder of one sub-folder of images per class, "
                        f"or package.module:callable returning a Dataset (or a pair: to train "
                        f"on, to test on) (default {d.dataset})")
    g.add_argument("--data-dir", dest="data_dir",
                   help="cifar10: the cifar-10-batches-py directory (or its parent)")
    g.add_argument("--model", type=model_reference,
                   help=f"{', '.join(TRAIN_MODELS)}, or a model of your own as "
                        f"package.module:callable (its classes set with --model-kwargs) "
                        f"(default {d.model})")
    g.add_argument("--model-kwargs", dest="model_kwargs", type=model_kwargs,
                   help="keyword arguments of the model as a JSON object, e.g. "
                        "'{\"num_classes\": 10}' (for this library's models over the "
                        "trainer's own)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, help=f"(default {d.method})")
    g.add_argument("--scheme", choices=SCHEMES,
                   help=f"the low-rank scheme of trp, decomp and lowrank (baseline ignores "
                        f"it) (default {d.scheme})")
    g.add_argument("--pointwise", action="store_true",
                   help="also factorise the 1x1 convs and linear layers (scheme pointwise, "
                        "two 1x1 convs / two linears) and count the linear layers' MACs; "
                        "--scheme pointwise acts on those layers alone")
    g.add_argument("--energy", type=float,
                   help="trp: energy of the projection (default 0.9); decomp: energy of the "
                        "decomposition (default 0.9 unless --rank is given)")
    g.add_argument("--nuclear-weight", dest="nuclear_weight", type=float,
                   help=f"trp: lambda of the nuclear sub-gradient, 0 = off "
                        f"(default {d.nuclear_weight})")
    g.add_argument("--period", type=int,
                   help=f"trp: project every PERIOD iterations (default {d.period})")
    g.add_argument("--final-threshold", dest="final_threshold", type=float,
                   help=f"trp: keep singular values above this at the final decomposition "
                        f"(default {d.final_threshold})")
    g.add_argument("--final-energy", dest="final_energy", type=float,
                   help="trp: decompose at the end by this energy instead of the threshold "
                        "(both apply when both are given)")
    g.add_argument("--target-speedup", dest="target_speedup", type=float,
                   help="trp, decomp, lowrank: a conv FLOP budget, the ranks chosen for a "
                        "speed-up of at least this (> 1) and as close as the rank steps allow; "
                        "trp adapts its projection energy to it every epoch and replaces the "
                        "final threshold/energy rule, decomp replaces --energy/--rank, lowrank "
                        "replaces --rank (one common rank fraction)")
    g.add_argument("--rank-multiple", dest="rank_multiple", type=int,
                   help="trp, decomp, lowrank: round every rank up to a multiple of this, "
                        "capped at full rank (default 1)")
    g.add_argument("--measure", choices=("torch", "onnxruntime"),
                   help="trp, decomp: time each layer dense and factorised in this runtime on "
                        "its real input and keep the faster (the report then holds both "
                        "latencies)")
    g.add_argument("--rank", type=rank,
                   help="lowrank (required) and decomp: an int rank cap, or a float fraction "
                        "of each layer's full rank; for tucker2 one value applies to both "
                        "ranks, R_IN,R_OUT gives the pair")
    g.add_argument("--finetune-epochs", dest="finetune_epochs", type=int,
                   help=f"decomp: fine-tuning epochs after the decomposition "
                        f"(default {d.finetune_epochs})")
    g.add_argument("--init", help="decomp: model.pt of a trained baseline run to decompose "
                                  "instead of training one")
    g.add_argument("--orth-weight", dest="orth_weight", type=float,
                   help=f"lowrank: weight of the orthogonality penalty, 0 = off "
                        f"(default {d.orth_weight})")
    g.add_argument("--penalty-kind", dest="penalty_kind", choices=PENALTY_KINDS,
                   help="lowrank: the orthogonality penalty, so = ||A^T A - I||^2, dso = ELRT's "
                        "double soft ||A^T A - I||^2 + ||A A^T - I||^2 (default: dso for "
                        "tucker2, so otherwise)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"(default {d.epochs})")
    g.add_argument("--batch-size", dest="batch_size", type=int, help=f"(default {d.batch_size})")
    g.add_argument("--lr", type=float, help=f"initial learning rate (default {d.lr})")
    g.add_argument("--momentum", type=float, help=f"(default {d.momentum})")
    g.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help=f"(default {d.weight_decay})")
    g.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES,
                   help=f"cosine, or step (x0.1 at 50%% and 75%%) (default {d.lr_schedule})")
    g.add_argument("--seed", type=int, help=f"(default {d.seed})")
    g = p.add_argument_group("run")
    g.add_argument("--device", help=f"cpu, cuda, cuda:1, ... (default {d.device})")
    g.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: 1 for digits on the CPU, whose tiny "
                        "tensors gain little from more; torch's default otherwise)")
    g.add_argument("--out", help="output directory (default runs/DATASET-MODEL-METHOD-SCHEME)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bars (the per-epoch log lines remain)")
    return p


def run(args: argparse.Namespace) -> int:
    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "out", "resume", "no_progress")}
    if "final_energy" in options and "final_threshold" not in options:
        options["final_threshold"] = None   # --final-energy alone replaces the threshold rule
    if "target_speedup" in options and "final_threshold" not in options:
        options["final_threshold"] = None   # so does --target-speedup (trp's final ranks)
    resume = getattr(args, "resume", False)
    if resume and not hasattr(args, "out"):
        raise UsageError(f"{PROG} train: error: --resume needs --out, the run's directory")
    try:
        if resume:
            prepared = prepare_resume(args.out, options)
        else:
            config = TrainConfig.from_dict(options)
            out = args.out if hasattr(args, "out") else os.path.join(
                "runs", f"{config.dataset}-{config.model}-{config.method}-{config.scheme}")
            prepared = prepare(config, out)
    except (ValueError, TypeError) as exc:   # bad input, found before anything is written
        raise usage_error("train", exc) from exc
    progress = False if getattr(args, "no_progress", False) else None
    try:
        report = training.run(prepared, progress=progress)
    except KeyboardInterrupt:
        print(f"{PROG} train: interrupted; {os.path.join(prepared.out_dir, 'checkpoint.pt')} "
              f"holds the last finished epoch: continue with `python -m {PROG} train --out "
              f"{prepared.out_dir} --resume`", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as exc:
        print(f"{PROG} train: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if report is not None:
        speed = report["flops_speedup"]
        print(f"test accuracy {100 * report['test_accuracy']:.2f}% at {speed:.2f}x conv FLOP "
              f"speed-up ({report['params']:,} parameters); report: "
              f"{os.path.join(prepared.out_dir, 'report.md')}")
        for warning in (timing_warning(largest_spread(report) or 1.0),
                        report.get("missed_target")):
            if warning:
                print(f"{PROG} train: warning: {warning}", file=sys.stderr)
    return 0


