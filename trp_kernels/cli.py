"""Command line: ``python -m trp_kernels train ...`` and ``python -m trp_kernels export ...``
(also installed as ``trp-kernels``). docs/training.md documents both.

Exit codes: 0 done; 1 training diverged; 2 bad input (a one-line error naming the problem;
nothing is written); 130 interrupted (the checkpoint of the last finished epoch remains).
"""

from __future__ import annotations

import argparse
import os
import sys

from .rank_training import PENALTY_KINDS
from .training import (DATASETS, LR_SCHEDULES, METHODS, SCHEMES, TRAIN_MODELS, TrainConfig,
                       TrainingDiverged, prepare, prepare_resume, run)

PROG = "trp_kernels"
EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage dump) with exit code 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def _rank_part(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an int (rank) or a fraction of full rank in (0, 1], or for tucker2 a "
            f"pair R_IN,R_OUT of those, got {text!r}") from None


def _rank(text: str):
    """An int (a rank cap, e.g. 8), a float (a fraction of full rank, e.g. 0.25), or two of
    those separated by a comma (tucker2's (r_in, r_out), e.g. 0.25,0.5). The values are checked
    by the scheme's own rule when the configuration is validated."""
    parts = text.split(",")
    if len(parts) == 2:
        return tuple(_rank_part(p) for p in parts)
    if len(parts) != 1:
        raise argparse.ArgumentTypeError(f"must be one value or a pair R_IN,R_OUT, got {text!r}")
    return _rank_part(text)


def _train_parser(subparsers) -> argparse.ArgumentParser:
    d = TrainConfig()
    # SUPPRESS: only the options given on the command line appear in the namespace, so a
    # resumed run can tell a repeated option from a changed one.
    p = subparsers.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a model (TRP by default) and write a compressed model and a report",
        description="Train with TRP, a decomposition baseline, or low-rank from scratch. "
                    "Defaults: the main job (digits, ResNet-20, TRP+Nu, channel scheme).")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", choices=DATASETS, help=f"(default {d.dataset})")
    g.add_argument("--data-dir", dest="data_dir",
                   help="cifar10: the cifar-10-batches-py directory (or its parent)")
    g.add_argument("--model", choices=TRAIN_MODELS, help=f"(default {d.model})")
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
    g.add_argument("--rank", type=_rank,
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


def _export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a model.pt written by train to ONNX and/or torch.export",
        description="Export a saved model. ONNX files hold plain conv pairs; torch.export "
                    "programs keep the library's low-rank op unless --conv-pairs is given.")
    p.add_argument("model", help="a model.pt written by train (or export.save_model)")
    p.add_argument("--onnx", help="write an ONNX file here")
    p.add_argument("--program", help="write a torch.export program (.pt2) here")
    p.add_argument("--conv-pairs", dest="conv_pairs", action="store_true",
                   help="torch.export: replace the low-rank op by plain nn.Conv2d pairs")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Trained Rank Pruning and low-rank training.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(subparsers)
    _export_parser(subparsers)
    return parser


def _train(args: argparse.Namespace) -> int:
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
            out = getattr(args, "out", None) or os.path.join(
                "runs", f"{config.dataset}-{config.model}-{config.method}-{config.scheme}")
            prepared = prepare(config, out)
    except (ValueError, TypeError) as exc:   # bad input, found before anything is written
        raise UsageError(f"{PROG} train: error: {exc}") from exc
    progress = False if getattr(args, "no_progress", False) else None
    try:
        report = run(prepared, progress=progress)
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
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from .compression.export import export_onnx, export_program, load_model, saved_input_shape

    targets = [p for p in (args.onnx, args.program) if p]
    if not targets:
        raise UsageError(f"{PROG} export: error: nothing to do; give --onnx and/or --program")
    for path in targets:
        if os.path.exists(path):
            raise UsageError(f"{PROG} export: error: {path} exists; not overwriting it")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"{PROG} export: error: directory {parent} does not exist")
    try:
        model = load_model(args.model)
        shape = saved_input_shape(args.model)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{PROG} export: error: {exc}") from exc
    if shape is None:
        raise UsageError(f"{PROG} export: error: {args.model} does not record its input shape")
    example = torch.randn(2, *shape)
    if args.onnx:
        export_onnx(model, example, args.onnx)
        print(f"wrote {args.onnx}")
    if args.program:
        torch.export.save(export_program(model, example, conv_pairs=args.conv_pairs),
                          args.program)
        print(f"wrote {args.program}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _train(args) if args.command == "train" else _export(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
