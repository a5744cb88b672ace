"""Preparation: everything that can reject the input, before anything is written."""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..compression import (CheckpointError, OutputPathError, budget, build_arch,
                           check_output_dir, decomposable_layers, layer_scheme, load_model)
from ..compression.fidelity import model_outputs
from ..schemes import geometry
from ..schemes.layer_kinds import conv_weight_shape
from . import distributed
from .checkpoints import CHECKPOINT, MODEL_FILE, REPORT, read_checkpoint
from .config import DIGITS_STAGE_STRIDES, TrainConfig, is_model_reference
from .data import ImageData, num_train_batches
from .sources import load_dataset
from .errors import ConfigError
from .methods import method_class

# Where a run executes may change when it resumes; what it computes may not.
RESUME_MAY_CHANGE = ("device", "threads")


@dataclass
class Prepared:
    config: TrainConfig
    out_dir: str
    data: ImageData
    device: torch.device
    checkpoint: dict | None       # the run to resume
    init_model: nn.Module | None  # decomp's trained baseline


def arch_kwargs(config: TrainConfig, data: ImageData) -> dict:
    """The keyword arguments of the run's model: for this library's models the trainer's own
    (classes, input channels, stage strides) updated by ``model_kwargs``; for a model of your
    own (``package.module:callable``), ``model_kwargs`` alone."""
    if is_model_reference(config.model):
        return dict(config.model_kwargs)
    strides = DIGITS_STAGE_STRIDES if config.dataset == "digits" else (1, 2, 2)
    return {"num_classes": data.num_classes, "in_channels": data.in_channels,
            "stage_strides": list(strides), **config.model_kwargs}


def build_model(config: TrainConfig, data: ImageData) -> nn.Module:
    """The run's dense model, freshly built; ConfigError naming model or model_kwargs when it
    cannot be."""
    try:
        model = build_arch(config.model, arch_kwargs(config, data))
    except CheckpointError as exc:
        raise ConfigError(f"model: {exc}", ["model"]) from None
    except TypeError as exc:
        raise ConfigError(f"model_kwargs do not fit {config.model}: {exc}",
                          ["model_kwargs"]) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {config.model} built a {type(model).__name__}, not a "
                          f"torch.nn.Module", ["model"])
    return model


def _check_outputs(model: nn.Module, config: TrainConfig, data: ImageData) -> None:
    """The model runs a batch of the dataset's images and gives one score per class."""
    x = data.batch_inputs(data.test_x[:2], torch.device("cpu"))
    try:
        out = model_outputs(model, x)
    except Exception as exc:   # whatever the model raises, the user's fix is the same
        raise ConfigError(f"model {config.model} cannot run a batch of {config.dataset} images "
                          f"{list(x.shape)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}", ["model"]) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 \
            or out.shape[1] < data.num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {config.model} gives {shape} for a batch of 2 "
                          f"{config.dataset} images; training needs [2, {data.num_classes}] "
                          f"class scores (set its classes with model_kwargs)",
                          ["model", "model_kwargs"])


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)",
                          ["device"]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device",
                          ["device"])
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {name!r}", ["device"])
    return device


def prepare(config: TrainConfig, out_dir: str, resume: bool = False) -> Prepared:
    """Checks the configuration, the output directory, the data and the files to read, and
    raises ValueError (ConfigError, DataError, CheckpointError) naming the problem. Writes
    nothing. ``resume``: continue the run in ``out_dir``, whose configuration ``config`` must
    repeat (``device`` and ``threads`` may change)."""
    if resume:
        return prepare_resume(out_dir, asdict(config))
    _check_out(out_dir)
    taken = [name for name in (CHECKPOINT, MODEL_FILE, REPORT)
             if os.path.exists(os.path.join(out_dir, name))]
    if taken:
        raise ConfigError(f"out {out_dir!r} already holds a run ({', '.join(taken)}); resume it "
                          f"or choose another directory", ["out"])
    return _prepare(config, out_dir, None)


def prepare_resume(out_dir: str, options: dict | None = None) -> Prepared:
    """``prepare`` for continuing the run in ``out_dir`` with its stored configuration.
    ``options`` (any subset of TrainConfig's fields) must agree with it, except ``device``
    and ``threads``, which they replace."""
    checkpoint = read_checkpoint(out_dir)
    _check_out(out_dir)
    stored = checkpoint["config"]
    options = dict(options or {})
    changed = sorted(k for k, v in options.items()
                     if k not in RESUME_MAY_CHANGE and stored.get(k) != v)
    if changed:
        raise ConfigError(
            f"a resumed run keeps its configuration, but {', '.join(changed)} differ from the "
            f"checkpoint's ({', '.join(f'{k}={stored.get(k)!r}' for k in changed)})", changed)
    config = TrainConfig.from_dict({**stored, **{k: options[k] for k in RESUME_MAY_CHANGE
                                                 if k in options}})
    return _prepare(config, out_dir, checkpoint)


def _check_out(out_dir: str) -> None:
    """The run's directory is one, or can be made, and takes files: checked before any work,
    not found out when the first checkpoint is due."""
    try:
        check_output_dir(out_dir)
    except OutputPathError as exc:
        raise ConfigError(str(exc), ["out"]) from None


def _prepare(config: TrainConfig, out_dir: str, checkpoint: dict | None) -> Prepared:
    config.validate()
    device = _device(config.device)
    data = load_dataset(config.dataset, config.data_dir)
    processes = distributed.world_size()
    if config.batch_size % processes:
        raise ConfigError(f"batch_size {config.batch_size} must divide evenly among the "
                          f"{processes} processes", ["batch_size"])
    if num_train_batches(data, config.batch_size) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the "
                          f"{len(data.train_y)} training images of {config.dataset}",
                          ["batch_size"])
    dense = build_model(config, data)
    _check_outputs(dense, config, data)
    _check_ranks(config, dense)
    if config.target_speedup is not None:
        _check_reachable(config, data, dense)
    init_model = None
    if config.init is not None and checkpoint is None:
        try:
            init_model = load_model(config.init, build_model(config, data))
        except CheckpointError as exc:
            raise ConfigError(f"init: {exc}", ["init"]) from None
        method_class(config.method).check_init(config, init_model)
    return Prepared(config, out_dir, data, device, checkpoint, init_model)


def _check_ranks(config: TrainConfig, dense: nn.Module) -> None:
    """The model has layers for the scheme (unless the method is the baseline, which
    factorises none), and an int rank is no larger than the largest full rank of the layers of
    each scheme."""
    targets = _targets(config, dense)
    if not targets:
        if config.method == "baseline":
            return
        raise ConfigError(f"model {config.model} has no layer that scheme {config.scheme} acts "
                          f"on"
                          + ("" if config.pointwise or config.scheme == "pointwise" else
                             " (its 1x1 convs and linear layers need --pointwise or --scheme "
                             "pointwise)"), ["model"])
    spec = config.rank_spec
    if config.pointwise and isinstance(spec, tuple):
        raise ConfigError("rank as a pair R_IN,R_OUT is tucker2's; with pointwise give one "
                          "value, which applies to every layer", ["rank", "pointwise"])
    schemes = [layer_scheme(m, config.scheme) for _, m in targets]
    for s in dict.fromkeys(schemes):
        registered = geometry.scheme(s)
        fulls = [registered.rank_parts(registered.full_rank(conv_weight_shape(m)))
                 for (_, m), t in zip(targets, schemes) if t == s]
        parts = spec if isinstance(spec, tuple) else (spec,) * len(fulls[0])
        for part, largest in zip(parts, map(max, zip(*fulls))):
            if isinstance(part, numbers.Integral) and part > largest:
                raise ConfigError(f"rank {part} exceeds the largest full rank ({largest}) of "
                                  f"{config.model}'s layers in the {s} scheme", ["rank"])


def _targets(config: TrainConfig, dense: nn.Module):
    return decomposable_layers(dense, scheme=config.scheme, pointwise=config.pointwise)


def _check_reachable(config: TrainConfig, data: ImageData, dense: nn.Module) -> None:
    """An unreachable target_speedup is refused now, not after training (the largest
    reachable speed-up depends on the layer shapes and rank_multiple, not on the weights)."""
    example = data.batch_inputs(data.test_x[:1], torch.device("cpu"))
    choose = budget.fraction_for_budget if config.method == "lowrank" else budget.plan_budget
    try:
        choose(dense, _targets(config, dense), config.scheme, example, config.target_speedup,
               config.rank_multiple, config.pointwise)
    except ValueError as exc:
        raise ConfigError(str(exc), ["target_speedup"]) from None
