"""``python -m trp_kernels compress``: a model of your own, importable or saved, decomposed to a
FLOP budget or by a rank rule (optionally keeping only what is measured faster), written as
DIR/model.pt and DIR/model.onnx, with DIR/report.{md,json,png}: conv MACs, the ONNX files'
latency in ONNX Runtime (dense and compressed, timed in interleaved rounds), torch's, and the
fidelity figures (docs/compression.md, "The compress command").

Every option is checked before anything is written; a mistake is one line naming the option,
exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from .options import (PROG, UsageError, build_model, input_shape, model_kwargs, rank,
                          usage_error)
from ..compression import (LatencyMeter, decompose_model, export_onnx, load_file, load_model,
                          restore_lowrank, save_model)
from ..compression.fidelity import model_outputs, warnings_silenced
from ..compression.latency import onnx_file_runner
from ..compression.onnx_extra import require
from ..ops import checks
from ..schemes import geometry
from ..training.report import model_figures, write_report

OUTPUTS = ("model.pt", "model.onnx", "report.json", "report.md", "report.png")
# Random inputs for the fidelity figures when no --calibration batch is given.
CALIBRATION_SAMPLES = 32


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compress", help="decompose a model of your own and write model.pt, model.onnx and a "
                         "report",
        description="Decompose the convs of any model (an importable callable or a saved model "
                    "file) to a FLOP budget or by a rank rule, and write DIR/model.pt, "
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
                   help="C,H,W of one input (default: the one a model file records)")
    g = p.add_argument_group("the ranks")
    g.add_argument("--scheme", default="channel", choices=tuple(geometry.SCHEMES),
                   help="the low-rank scheme (default channel)")
    g.add_argument("--pointwise", action="store_true",
                   help="also factorise the 1x1 convs and linear layers (scheme pointwise, "
                        "their MACs counted); the first conv and the classifier stay dense")
    g.add_argument("--target-speedup", dest="target_speedup", type=float,
                   help="a conv FLOP budget: ranks for a speed-up of at least this (> 1), "
                        "keeping as much energy as possible")
    g.add_argument("--energy", type=float, help="or the rank rule's energy in (0, 1]")
    g.add_argument("--rank", type=rank,
                   help="or an int rank cap, or a float fraction of each layer's full rank")
    g.add_argument("--rank-multiple", dest="rank_multiple", type=int, default=1,
                   help="round every rank up to a multiple of this (default 1)")
    g.add_argument("--measure", choices=("torch", "onnxruntime"),
                   help="keep each layer factorised only where it is measured faster in this "
                        "runtime, and never a model slower than the unmeasured plan or dense")
    g = p.add_argument_group("inputs and output")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=1,
                   help="the batch the latencies are measured at (default 1)")
    g.add_argument("--calibration",
                   help="a tensor file [B, C, H, W] of real inputs for the fidelity figures "
                        f"(default: {CALIBRATION_SAMPLES} random inputs)")
    g.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    g.add_argument("--seed", type=int, default=0, help="of the random inputs (default 0)")
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
        if args.threads is not None:
            checks.int_at_least(args.threads, 1, "threads")
    except (ValueError, TypeError) as exc:
        raise usage_error("compress", exc, ("target_speedup", "energy", "rank", "pointwise",
                                            "rank_multiple", "batch_size", "seed",
                                            "threads")) from None


def _out_dir(args, name: str) -> str:
    out = args.out or os.path.join("runs", f"compress-{name}-{args.scheme}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise _fail(f"--out {out} exists and is not a directory")
    taken = [f for f in OUTPUTS if os.path.exists(os.path.join(out, f))]
    if taken:
        raise _fail(f"--out {out} already holds {', '.join(taken)}; choose another directory")
    return out


def _dense_model(args):
    """(model, arch reference or None, its kwargs, the input shape a file records)."""
    if os.path.exists(args.model):
        try:
            saved = load_file(args.model, "model file", ("format", "state_dict"))
            if not saved.get("arch"):
                raise _fail(f"--model {args.model} names no architecture: give --model "
                            f"package.module:callable (and --model-kwargs) and --weights "
                            f"{args.model}")
            model = load_model(args.model)
        except ValueError as exc:
            raise _fail(f"--model {exc}") from None
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


class ProgressMeter(LatencyMeter):
    """A LatencyMeter that advances a progress bar at every comparison it times (one per layer,
    then the whole-model checks)."""

    def __init__(self, runtime: str, bar):
        super().__init__(runtime)
        self.bar = bar

    def seconds(self, modules, x):
        timings = super().seconds(modules, x)
        self.bar.update(1)
        return timings


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_options(args)
    try:
        require("onnx", "onnxscript", "onnxruntime",
                purpose="compress (it writes model.onnx and times it in ONNX Runtime)")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    model, arch, arch_kwargs, recorded_shape = _dense_model(args)
    shape = args.input_shape or (tuple(recorded_shape) if recorded_shape else None)
    if shape is None:
        raise _fail("--input-shape C,H,W is required: the shape of one input, e.g. 3,224,224")
    name = arch.split(":")[-1].split(".")[-1] if arch else \
        os.path.splitext(os.path.basename(args.model))[0]
    out = _out_dir(args, name)
    if args.weights is not None:
        _load_weights(model, args.weights)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    example = torch.randn(1, *shape, generator=generator)
    batch = torch.randn(args.batch_size, *shape, generator=generator)
    calibration = _calibration(args, shape, generator)
    try:
        model_outputs(model, example)
    except Exception as exc:   # whatever the model raises, the input shape is the suspect
        raise _fail(f"--model cannot run an input of shape {list(example.shape)} "
                    f"(--input-shape): {type(exc).__name__}: {exc}") from None

    log = (lambda line: None) if args.no_progress else \
        (lambda line: tqdm.write(line, file=sys.stderr))
    dense = copy.deepcopy(model).eval()
    log(f"decomposing {name} in the {args.scheme} scheme"
        + (", its 1x1 convs and linear layers in pointwise" if args.pointwise else "")
        + (f", measured in {args.measure}" if args.measure else ""))
    report = _decompose(args, model.eval(), batch, calibration)

    os.makedirs(out, exist_ok=True)
    save_model(model, os.path.join(out, "model.pt"), arch, arch_kwargs, shape,
               {"flops_speedup": report.flops_speedup, "scheme": args.scheme})
    log(f"exporting {os.path.join(out, 'model.onnx')} and timing it against the dense model")
    export_onnx(model, example, os.path.join(out, "model.onnx"))
    onnx_dense, onnx_compressed = _time_onnx_files(dense, example, batch,
                                                   os.path.join(out, "model.onnx"))
    figures = model_figures(model, dense, {entry.name for entry in report.layers}, args.scheme,
                            example, batch, decomposition=report, pointwise=args.pointwise)
    summary = {
        "method": "compress", "scheme": args.scheme,
        "title": f"compress / {args.scheme}: {args.model}",
        "test_accuracy": None, "dense_test_accuracy": None,
        **figures,
        "onnxruntime_latency_ms": 1e3 * onnx_compressed.best,
        "dense_onnxruntime_latency_ms": 1e3 * onnx_dense.best,
        "onnxruntime_latency_speedup": onnx_dense.best / onnx_compressed.best,
        "onnxruntime_latency_median_ms": 1e3 * onnx_compressed.median,
        "dense_onnxruntime_latency_median_ms": 1e3 * onnx_dense.median,
        "model": args.model, "input_shape": list(shape), "device": "cpu",
        "threads": torch.get_num_threads(), "skipped": report.skipped,
        "energy_level": report.energy_level,
        "calibration": args.calibration or f"{len(calibration)} random inputs",
        "config": {k: v for k, v in vars(args).items() if k != "no_progress"},
        "time_s": time.perf_counter() - started,
        "torch": torch.__version__, "trp_kernels": __version__,
    }
    write_report(summary, out)
    print(f"conv FLOP speed-up {report.flops_speedup:.2f}x; ONNX Runtime "
          f"{1e3 * onnx_dense.best:.1f} -> {1e3 * onnx_compressed.best:.1f} ms per batch of "
          f"{args.batch_size} ({summary['onnxruntime_latency_speedup']:.2f}x)")
    print("; ".join(report.fidelity_lines()[:1]) + f" ({summary['calibration']})")
    print(f"wrote {', '.join(os.path.join(out, f) for f in OUTPUTS)}")
    if report.fidelity_warning():
        print(f"{PROG} compress: warning: {report.fidelity_warning()}", file=sys.stderr)
    return 0


def _decompose(args, model: nn.Module, batch: torch.Tensor, calibration: torch.Tensor):
    """decompose_model with the command's options, a progress bar while measuring, the
    fidelity warning held back for the command's own last line."""
    bar = tqdm(desc=f"measuring in {args.measure}", unit=" comparisons", leave=False,
               disable=True if args.no_progress else None) if args.measure else None
    try:
        with warnings_silenced():
            return decompose_model(
                model, args.scheme, energy=args.energy, rank=args.rank,
                target_speedup=args.target_speedup, rank_multiple=args.rank_multiple,
                measure=None if args.measure is None else ProgressMeter(args.measure, bar),
                example_input=batch, calibration_input=calibration, pointwise=args.pointwise)
    except ValueError as exc:
        raise usage_error("compress", exc, ("target_speedup",)) from None
    finally:
        if bar is not None:
            bar.close()


def _time_onnx_files(dense: nn.Module, example: torch.Tensor, batch: torch.Tensor, path: str):
    """(dense, compressed) Timing of the ONNX files in ONNX Runtime on ``batch``, in
    interleaved rounds: the dense model exported the same way, to a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "dense.onnx")
        export_onnx(dense, example, dense_path)
        meter = LatencyMeter("onnxruntime")
        return meter.time_runs([onnx_file_runner(dense_path, batch),
                                onnx_file_runner(path, batch)], batch)
