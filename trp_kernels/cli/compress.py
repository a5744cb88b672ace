"""``python -m trp_kernels compress``: a model of your own, importable or saved, decomposed to a
FLOP budget or by a rank rule (optionally keeping only what is measured faster), with ``--data``
judged by its top-1 on held-out images before and after, its ranks chosen by accuracy
(``--select accuracy``) and fine-tuned (``--finetune-epochs``); written as DIR/model.pt and
DIR/model.onnx, with DIR/report.{md,json,png}: accuracy, conv MACs, the ONNX files' latency
in ONNX Runtime (dense and compressed, timed in interleaved rounds), torch's, and the fidelity
figures (docs/compression.md, "The compress command").

Every option is checked before any work: a mistake is one line naming the option, exit status
2, nothing written. Fine-tuning is the trainer's (method finetune): DIR/compressed.pt holds the
model before it, DIR/checkpoint.pt each finished epoch, and the same command with --resume
continues an interrupted one.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..compression import (CheckpointError, LatencyMeter, OutputPathError, check_output_dir,
                           decompose_model, export_onnx, load_file, load_model, restore_lowrank,
                           save_model)
from ..compression import accuracy
from ..compression.decompose import DecompositionReport
from ..compression.fidelity import model_outputs
from ..compression.latency import MEASURED_ROUND_FACTOR, ROUNDS, onnx_file_runner, timing_warning
from ..compression.onnx_extra import require
from ..compression.sensitivity import SELECTIONS
from ..ops import checks
from ..schemes import geometry
from ..training import (CHECKPOINT, ConfigError, DataError, ImageData, Prepared, TrainConfig,
                        TrainingDiverged, fit, load_dataset, read_checkpoint)
from ..training.report import (largest_spread, latency_figures, model_figures, scheme_label,
                               write_report)
from .options import (PROG, UsageError, build_model, input_shape, model_kwargs, rank,
                      usage_error)

OUTPUTS = ("model.pt", "model.onnx", "report.json", "report.md", "report.png")
# The model before fine-tuning, with what the report needs of the compression.
COMPRESSED = "compressed.pt"
# Random inputs for the fidelity figures when neither --data nor --calibration is given.
CALIBRATION_SAMPLES = 32
# With --data: the calibration images of the fidelity figures and of --select accuracy.
DATA_CALIBRATION_SAMPLES = 512
# Small batches: fine-tuning a compressed model for an epoch or two on a small set wants steps
# more than throughput (docs/compression.md, "Fine-tuning").
FINETUNE_BATCH = 32
EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 130
# Options that may differ when a run resumes: where and how it runs, not what it computes.
RESUME_MAY_CHANGE = ("threads", "no_progress", "resume")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compress", help="decompose a model of your own and write model.pt, model.onnx and a "
                         "report",
        description="Decompose the convs of any model (an importable callable or a saved model "
                    "file) to a FLOP budget or by a rank rule, optionally judge it and choose "
                    "its ranks on labelled data and fine-tune it, and write DIR/model.pt, "
                    "DIR/model.onnx and DIR/report.{md,json,png}.")
    g = p.add_argument_group("the model")
    g.add_argument("--model", required=True,
                   help="package.module:callable that builds the dense model (e.g. "
                        "pytorchcv.models.resnet:resnet18), or a model.pt written by train or "
                        "compress")
    g.add_argument("--model-kwargs", dest="model_kwargs", type=model_kwargs, default={},
                   help="keyword arguments of the callable as a JSON object")
    g.add_argument("--weights", help="a state_dict file (torch.save(model.state_dict())), or a "
                                     "file holding one under 'state_dict', to load first")
    g.add_argument("--input-shape", dest="input_shape", type=input_shape,
                   help="C,H,W of one input (default: the one a model file records, or the "
                        "data's)")
    g = p.add_argument_group("the ranks")
    g.add_argument("--scheme", default="channel", choices=tuple(geometry.SCHEMES),
                   help="the low-rank scheme (default channel)")
    g.add_argument("--pointwise", action="store_true",
                   help="also factorise the 1x1 convs and linear layers (scheme pointwise, "
                        "their MACs counted); the first conv and the classifier stay dense")
    g.add_argument("--target-speedup", dest="target_speedup", type=float,
                   help="a conv FLOP budget: ranks for a speed-up of at least this (> 1), "
                        "keeping as much energy as possible")
    g.add_argument("--select", choices=SELECTIONS, default="energy",
                   help="how the budget's ranks are chosen: energy (the leximin energy kept, "
                        "default) or accuracy (a per-layer sensitivity sweep on the "
                        "calibration images of --data, cached)")
    g.add_argument("--energy", type=float, help="or the rank rule's energy in (0, 1]")
    g.add_argument("--rank", type=rank,
                   help="or an int rank cap, or a float fraction of each layer's full rank")
    g.add_argument("--rank-multiple", dest="rank_multiple", type=int, default=1,
                   help="round every rank up to a multiple of this (default 1)")
    g.add_argument("--measure", choices=("torch", "onnxruntime"),
                   help="keep each layer factorised only where it is measured faster in this "
                        "runtime, and never a model slower than the unmeasured plan or dense")
    g = p.add_argument_group("data and fine-tuning")
    g.add_argument("--data",
                   help="labelled images: digits, a folder of one sub-folder of images per "
                        "class, or package.module:callable returning a Dataset (or a pair: to "
                        "fit, held out); 20%% held out for the top-1 before and after, the rest "
                        "for calibration and fine-tuning")
    g.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, default=0,
                   help="fine-tune the compressed model on --data for this many epochs "
                        "(default 0), with the trainer's schedule and checkpoints")
    g.add_argument("--lr", type=float, default=0.01,
                   help="the fine-tuning's initial learning rate, cosine schedule (default "
                        "0.01)")
    g.add_argument("--finetune-batch-size", dest="finetune_batch_size", type=int,
                   default=FINETUNE_BATCH,
                   help=f"the fine-tuning's batch size (default {FINETUNE_BATCH}, or the "
                        f"number of images to fit when fewer)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted fine-tuning in --out (repeat the command)")
    g = p.add_argument_group("inputs and output")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=1,
                   help="the batch the latencies are measured at (default 1)")
    g.add_argument("--calibration",
                   help="without --data: a tensor file [B, C, H, W] of real inputs for the "
                        f"fidelity figures (default: {CALIBRATION_SAMPLES} random inputs)")
    g.add_argument("--calibration-samples", dest="calibration_samples", type=int,
                   default=DATA_CALIBRATION_SAMPLES,
                   help="with --data: how many of the images to fit calibrate (the fidelity "
                        "figures, BatchNorm adaptation, the sweep of --select accuracy, whose "
                        f"cost grows with it) (default {DATA_CALIBRATION_SAMPLES})")
    g.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    g.add_argument("--seed", type=int, default=0,
                   help="of the model's initial weights, the random inputs and the fine-tuning "
                        "(default 0)")
    g.add_argument("--out", help="output directory (default runs/compress-MODEL-SCHEME)")
    g.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress lines and bars")
    return p


def _fail(message: str) -> UsageError:
    return UsageError(f"{PROG} compress: error: {message}")


def _check_options(args) -> None:
    """The option values, by the library's own checks, before any work."""
    if args.target_speedup is None and args.energy is None and args.rank is None:
        raise _fail("give --target-speedup, --energy or --rank: the rule that chooses the ranks")
    try:
        if args.target_speedup is not None:
            checks.target_speedup(args.target_speedup)
            if args.energy is not None or args.rank is not None:
                raise ValueError("target_speedup chooses the ranks itself; give it without "
                                 "energy and rank")
        if args.energy is not None:
            checks.energy(args.energy)
        geometry.scheme(args.scheme).check_rank_spec(args.rank, "rank")
        if args.pointwise and isinstance(args.rank, tuple):
            raise ValueError("rank as a pair R_IN,R_OUT is tucker2's; with pointwise give one "
                             "value, which applies to every layer")
        checks.rank_multiple(args.rank_multiple)
        checks.int_at_least(args.batch_size, 1, "batch_size")
        checks.int_at_least(args.seed, 0, "seed")
        checks.int_at_least(args.finetune_epochs, 0, "finetune_epochs")
        checks.int_at_least(args.finetune_batch_size, 2, "finetune_batch_size")
        checks.int_at_least(args.calibration_samples, 1, "calibration_samples")
        if args.threads is not None:
            checks.int_at_least(args.threads, 1, "threads")
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {args.lr!r}")
        if args.select == "accuracy" and (args.data is None or args.target_speedup is None):
            raise ValueError("select accuracy chooses the ranks of target_speedup by their "
                             "accuracy on data: give both")
        if args.finetune_epochs and args.data is None:
            raise ValueError("finetune_epochs needs data: the labelled images to fine-tune on")
        if args.data is not None and args.calibration is not None:
            raise ValueError("give data (labelled images) or calibration (inputs alone), not "
                             "both")
        if args.resume and (args.out is None or not args.finetune_epochs):
            raise ValueError("resume needs the out and finetune_epochs of the interrupted "
                             "command")
    except (ValueError, TypeError) as exc:
        raise usage_error("compress", exc, (
            "target_speedup", "energy", "rank", "pointwise", "rank_multiple", "batch_size",
            "seed", "threads", "finetune_epochs", "finetune_batch_size", "calibration_samples",
            "lr", "select", "data", "calibration",
            "resume", "out")) from None


def _model_name(args) -> str:
    if os.path.exists(args.model):
        return os.path.splitext(os.path.basename(args.model))[0]
    return args.model.split(":")[-1].split(".")[-1]


def _out_dir(args) -> str:
    """The output directory: writable, and free (or, with --resume, an interrupted run)."""
    out = args.out if args.out is not None else \
        os.path.join("runs", f"compress-{_model_name(args)}-{args.scheme}")
    try:
        check_output_dir(out)
    except OutputPathError as exc:
        raise usage_error("compress", exc, ("out",)) from None
    if args.resume:
        if not os.path.isfile(os.path.join(out, COMPRESSED)):
            raise _fail(f"--resume: --out {out} holds no {COMPRESSED} of an interrupted "
                        f"fine-tuning; run the command without --resume")
        if os.path.exists(os.path.join(out, "report.json")):
            raise _fail(f"--resume: --out {out} holds a finished run (report.json)")
        return out
    taken = [f for f in (*OUTPUTS, COMPRESSED, CHECKPOINT)
             if os.path.exists(os.path.join(out, f))]
    if taken:
        hint = "; continue it with --resume" if COMPRESSED in taken else ""
        raise _fail(f"--out {out} already holds {', '.join(taken)}{hint}; choose another "
                    f"directory")
    return out


def _stored_compression(args, out: str) -> dict:
    """What the interrupted run in ``out`` stored of its compression; its options must be the
    command's (but those of RESUME_MAY_CHANGE)."""
    try:
        saved = load_file(os.path.join(out, COMPRESSED), "model file", ("format", "metadata"))
    except CheckpointError as exc:
        raise _fail(f"--resume: {exc}") from None
    stored = saved["metadata"].get("compress")
    if stored is None:
        raise _fail(f"--resume: {os.path.join(out, COMPRESSED)} was not written by compress")
    given = _options(args)
    changed = sorted(k for k in set(given) | set(stored["options"])
                     if k not in RESUME_MAY_CHANGE and given.get(k) != stored["options"].get(k))
    if changed:
        raise _fail(f"--resume: the interrupted run was made with other options: "
                    f"{', '.join('--' + k.replace('_', '-') for k in changed)}; repeat its "
                    f"command")
    return stored


def _options(args) -> dict:
    """The command's options as stored: plain values (a rank pair as a list)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()
            if k != "command"}


def _dense_model(args):
    """(model, arch reference, its kwargs, the input shape a file records); the model's
    initial weights drawn from --seed."""
    torch.manual_seed(args.seed)
    if os.path.exists(args.model):
        try:
            saved = load_file(args.model, "model file", ("format", "state_dict"))
            if not saved.get("arch"):
                raise _fail(f"--model {args.model} names no architecture: give --model "
                            f"package.module:callable (and --model-kwargs) and --weights "
                            f"{args.model}")
            model = load_model(args.model)
        except ValueError as exc:
            hint = (f": give --model package.module:callable and --weights {args.model}"
                    if "holds a state_dict" in str(exc) else "")
            raise _fail(f"--model {exc}{hint}") from None
        return model, saved.get("arch"), saved.get("arch_kwargs", {}), saved.get("input_shape")
    if ":" not in args.model or not all(args.model.split(":", 1)):
        raise _fail(f"--model {args.model} does not exist and is not package.module:callable")
    model = build_model("compress", args.model, args.model_kwargs)
    return model, args.model, args.model_kwargs, None


def _load_weights(model: nn.Module, path: str) -> None:
    try:
        saved = load_file(path, "weights file")
    except ValueError as exc:
        raise _fail(f"--weights: {exc}") from None
    state = saved.get("state_dict", saved)
    try:
        restore_lowrank(model, state)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise _fail(f"--weights {path} does not fit the model: "
                    f"{str(exc).splitlines()[0]}") from None


def _load_data(args, shape, progress) -> ImageData:
    try:
        data = load_dataset(args.data, image_shape=shape, progress=progress, option="data")
    except (DataError, ValueError) as exc:
        raise usage_error("compress", exc, ("data",)) from None
    if shape is not None and tuple(data.test_x.shape[1:]) != tuple(shape):
        raise _fail(f"--data {args.data} holds inputs of shape {list(data.test_x.shape[1:])}, "
                    f"the model takes {list(shape)} (--input-shape)")
    return data


def _calibration(args, shape, generator) -> torch.Tensor:
    if args.calibration is None:
        return torch.randn(CALIBRATION_SAMPLES, *shape, generator=generator)
    if not os.path.isfile(args.calibration):
        raise _fail(f"--calibration {args.calibration} does not exist")
    try:
        batch = torch.load(args.calibration, map_location="cpu", weights_only=True)
    except Exception as exc:   # any unpickling problem means the same to the user
        raise _fail(f"--calibration {args.calibration} is unreadable ({type(exc).__name__})") \
            from None
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 \
            or tuple(batch.shape[1:]) != tuple(shape) or not batch.is_floating_point():
        got = list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise _fail(f"--calibration must hold a float tensor [B, {', '.join(map(str, shape))}], "
                    f"got {got}")
    return batch.float()


def _check_runs(model: nn.Module, example: torch.Tensor, data: ImageData | None) -> None:
    """The model runs an input of the shape, and gives a class score for every label of the
    data."""
    try:
        out = model_outputs(model, example)
    except Exception as exc:   # whatever the model raises, the input shape is the suspect
        raise _fail(f"--model cannot run an input of shape {list(example.shape)} "
                    f"(--input-shape): {type(exc).__name__}: {exc}") from None
    if data is not None and (not isinstance(out, torch.Tensor) or out.dim() != 2
                             or out.shape[1] < data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _fail(f"--model gives {got} for an input, but --data {data.name} has "
                    f"{data.num_classes} classes: it needs [B, >= {data.num_classes}] class "
                    f"scores")


def _finetune_config(args, arch, arch_kwargs, out, data: ImageData) -> TrainConfig:
    """The trainer's configuration of the fine-tuning (method finetune), checked now."""
    config = TrainConfig(dataset=args.data, model=arch, model_kwargs=dict(arch_kwargs),
                         method="finetune", scheme=args.scheme, pointwise=args.pointwise,
                         epochs=args.finetune_epochs, lr=args.lr, seed=args.seed,
                         batch_size=min(args.finetune_batch_size, len(data.train_y)),
                         threads=args.threads, init=os.path.join(out, COMPRESSED))
    try:
        config.validate()
    except ConfigError as exc:
        raise usage_error("compress", exc) from None
    return config


def _labelled(data: ImageData, split: str, limit: int | None = None):
    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    return data.batch_inputs(x[:limit], "cpu"), y[:limit]


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_options(args)
    try:
        require("onnx", "onnxscript", "onnxruntime",
                purpose="compress (it writes model.onnx and times it in ONNX Runtime)")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    out = _out_dir(args)
    stored = _stored_compression(args, out) if args.resume else None
    progress = False if args.no_progress else None
    model, arch, arch_kwargs, recorded_shape = _dense_model(args)
    shape = args.input_shape or (tuple(recorded_shape) if recorded_shape else None)
    if args.weights is not None:
        _load_weights(model, args.weights)
    data = None if args.data is None else _load_data(args, shape, progress)
    if shape is None and data is not None:
        shape = tuple(data.test_x.shape[1:])
    if shape is None:
        raise _fail("--input-shape C,H,W is required: the shape of one input, e.g. 3,224,224")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    example = torch.randn(1, *shape, generator=generator)
    batch = torch.randn(args.batch_size, *shape, generator=generator)
    calibration = None if data is not None else _calibration(args, shape, generator)
    _check_runs(model, example, data)
    config = None if not args.finetune_epochs else \
        _finetune_config(args, arch, arch_kwargs, out, data)

    log = (lambda line: None) if args.no_progress else \
        (lambda line: tqdm.write(line, file=sys.stderr))
    dense = copy.deepcopy(model).eval()
    if stored is None:
        log(f"decomposing {_model_name(args)} in the {scheme_label(args.scheme, args.pointwise)}"
            f" scheme" + (f", measured in {args.measure}" if args.measure else "")
            + (f", ranks by accuracy on {args.data}" if args.select == "accuracy" else ""))
        report = _decompose(args, model.eval(), batch, calibration, data, progress)
        accuracy_before = report.accuracy
        if report.selection is not None:
            log(f"sensitivity sweep {'read from' if report.selection['cached'] else 'cached in'} "
                f"{report.selection['cache_file']}")
            report.selection = {k: v for k, v in report.selection.items()
                                if k not in ("cached", "cache_file")}
    else:
        report = DecompositionReport.from_dict(stored["decomposition"])
        accuracy_before = stored["accuracy"]
        log(f"resuming the fine-tuning in {out}")
    os.makedirs(out, exist_ok=True)
    finetuned = None
    if config is not None:
        try:
            model, finetuned = _finetune(args, config, model, arch, arch_kwargs, shape, out,
                                         data, report, progress, log, stored)
        except KeyboardInterrupt:
            print(f"{PROG} compress: interrupted; {out} holds the compressed model and the last "
                  f"finished epoch: continue with the same command and --resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except TrainingDiverged as exc:
            print(f"{PROG} compress: {exc}", file=sys.stderr)
            return EXIT_DIVERGED

    save_model(model, os.path.join(out, "model.pt"), arch, arch_kwargs, shape,
               {"flops_speedup": report.flops_speedup, "scheme": args.scheme})
    log(f"exporting {os.path.join(out, 'model.onnx')} and timing it against the dense model")
    export_onnx(model, example, os.path.join(out, "model.onnx"))
    onnx_dense, onnx_compressed = _time_onnx_files(dense, example, batch,
                                                   os.path.join(out, "model.onnx"))
    figures = model_figures(model, dense, {entry.name for entry in report.layers}, args.scheme,
                            example, batch, decomposition=report, pointwise=args.pointwise)
    accuracy_figures = None if accuracy_before is None else \
        {**accuracy_before, "finetuned": finetuned}
    final = None if accuracy_figures is None else \
        (finetuned if finetuned is not None else accuracy_figures["compressed"])
    summary = {
        "method": "compress", "scheme": args.scheme,
        "title": f"compress / {scheme_label(args.scheme, args.pointwise)}: {args.model}",
        "test_accuracy": final,
        "dense_test_accuracy": None if accuracy_figures is None else accuracy_figures["dense"],
        "accuracy": accuracy_figures,
        **figures,
        **latency_figures(onnx_dense, onnx_compressed, "onnxruntime_"),
        "onnxruntime_latency_median_ms": 1e3 * onnx_compressed.median,
        "dense_onnxruntime_latency_median_ms": 1e3 * onnx_dense.median,
        "model": args.model, "input_shape": list(shape), "device": "cpu",
        "threads": torch.get_num_threads(), "skipped": report.skipped,
        "energy_level": report.energy_level,
        "data": None if data is None else {
            "source": args.data, "held_out": len(data.test_y), "fit": len(data.train_y),
            "classes": data.num_classes},
        "eval_samples": None if data is None else len(data.test_y),
        "finetune_epochs": args.finetune_epochs,
        "calibration": _calibration_label(args, data, report),
        "config": {k: v for k, v in vars(args).items() if k not in RESUME_MAY_CHANGE},
        "time_s": time.perf_counter() - started,
        "torch": torch.__version__, "trp_kernels": __version__,
    }
    if finetuned is not None:
        # the fidelity figures describe the model before fine-tuning; its held-out top-1 now
        # says more than a warning to fine-tune it
        summary["fidelity_warning"] = None
    write_report(summary, out)
    _last_lines(args, out, summary, report)
    return 0


def _calibration_label(args, data, report) -> str:
    if data is not None:
        return f"{report.fidelity_samples} calibration images of {args.data}"
    return args.calibration or f"{CALIBRATION_SAMPLES} random inputs"


def _decompose(args, model: nn.Module, batch: torch.Tensor, calibration, data, progress):
    """decompose_model with the command's options; its warnings held back for the report and
    the command's own last lines."""
    labelled = {}
    if data is not None:
        fit_x, fit_y = _labelled(data, "train", args.calibration_samples)
        calibration = fit_x
        labelled = {"eval_data": _labelled(data, "test"), "calibration_data": (fit_x, fit_y),
                    "select": args.select}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decompose_model(
                model, args.scheme, energy=args.energy, rank=args.rank,
                target_speedup=args.target_speedup, rank_multiple=args.rank_multiple,
                measure=args.measure, example_input=batch, calibration_input=calibration,
                pointwise=args.pointwise, progress=progress, **labelled)
    except ValueError as exc:
        raise usage_error("compress", exc, ("target_speedup",)) from None


def _finetune(args, config, model, arch, arch_kwargs, shape, out, data, report, progress, log,
              stored):
    """The trainer's fine-tuning of the compressed ``model`` (written first to compressed.pt
    with what the report needs, for --resume; resumed, ``model`` is the dense one and the
    compressed model or the last checkpoint is read back); (the fine-tuned model, its held-out
    top-1)."""
    checkpoint = None
    if stored is None:
        save_model(model, os.path.join(out, COMPRESSED), arch, arch_kwargs, shape, {"compress": {
            "options": _options(args), "decomposition": report.to_dict(),
            "accuracy": dict(report.accuracy)}})
    else:
        try:
            if os.path.exists(os.path.join(out, CHECKPOINT)):
                checkpoint = read_checkpoint(out)
            else:
                model = load_model(os.path.join(out, COMPRESSED), model)
        except CheckpointError as exc:
            raise _fail(f"--resume: {exc}") from None
    prepared = Prepared(config, out, data, torch.device("cpu"), checkpoint, model)
    model = fit(prepared, progress=progress, log=log)
    return model, accuracy.measure(model, accuracy.labelled_batches(_labelled(data, "test"))).top1


def _last_lines(args, out, summary, report) -> None:
    """What the command prints at its end: the held-out top-1, the speed-ups with their
    timings' spread, the files, then any warning (a missed target last) on stderr."""
    acc = summary["accuracy"]
    if acc is not None:
        line = (f"top-1 on {summary['eval_samples']} held-out images: dense "
                f"{100 * acc['dense']:.2f}%, compressed {100 * acc['compressed']:.2f}%")
        if report.unadapted_accuracy is not None:
            line += f" ({100 * report.unadapted_accuracy:.2f}% before BatchNorm adaptation)"
        if acc["finetuned"] is not None:
            line += (f", fine-tuned {100 * acc['finetuned']:.2f}% ({args.finetune_epochs} "
                     f"epoch{'s' if args.finetune_epochs > 1 else ''})")
        print(line)
    target = "" if args.target_speedup is None else f" (target {args.target_speedup:g}x)"
    print(f"conv FLOP speed-up {report.flops_speedup:.2f}x{target}; ONNX Runtime "
          f"{summary['dense_onnxruntime_latency_ms']:.2f} -> "
          f"{summary['onnxruntime_latency_ms']:.2f} ms per batch of {args.batch_size} "
          f"({summary['onnxruntime_latency_speedup']:.2f}x, best of "
          f"{summary['onnxruntime_latency_rounds']} rounds, spread "
          f"+{100 * (summary['dense_onnxruntime_latency_spread'] - 1):.0f}% / "
          f"+{100 * (summary['onnxruntime_latency_spread'] - 1):.0f}%)")
    print("; ".join(report.fidelity_lines()[:1]) + f" ({summary['calibration']})")
    print(f"wrote {', '.join(os.path.join(out, f) for f in OUTPUTS)}")
    warnings_ = [summary.get("fidelity_warning"), timing_warning(largest_spread(summary)),
                 report.missed_target]
    for warning in filter(None, warnings_):
        print(f"{PROG} compress: warning: {warning}", file=sys.stderr)


def _time_onnx_files(dense: nn.Module, example: torch.Tensor, batch: torch.Tensor, path: str):
    """(dense, compressed) Timing of the ONNX files in ONNX Runtime on ``batch``, in
    interleaved rounds until steady (latency.py): the dense model exported the same way, to a
    temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "dense.onnx")
        export_onnx(dense, example, dense_path)
        meter = LatencyMeter("onnxruntime", max_rounds=MEASURED_ROUND_FACTOR * ROUNDS)
        return meter.time_runs([onnx_file_runner(dense_path, batch),
                                onnx_file_runner(path, batch)], batch)
