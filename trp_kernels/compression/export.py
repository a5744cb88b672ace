"""Shipping a compressed model: a self-describing file that restores every layer's rank and
scheme, plain PyTorch convs instead of the library's layers, torch.export and ONNX.

    save_model(model, "model.pt", arch="trp_kernels.models:resnet20",
               arch_kwargs={"in_channels": 1}, input_shape=(1, 8, 8))
    model = load_model("model.pt")                # ranks and schemes restored from the file
    to_conv_pairs(model)                          # plain nn.Conv2d only: no trp_kernels needed
    export_onnx(model, torch.randn(1, 1, 8, 8), "model.onnx")
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from ..schemes.layer_kinds import LOWRANK_LAYERS, plain_layers
from .files import CheckpointError, atomic_save, load_file
from .onnx_extra import quiet_export, require
from .restore import restore_lowrank

MODEL_FORMAT = "trp_kernels.model/1"
# Where an architecture named without a module lives: this library's models, which is how
# files written before architectures were references name theirs ("resnet20").
LIBRARY_MODELS = "trp_kernels.models"


def arch_reference(arch) -> str:
    """``arch`` as a model file stores it: "package.module:callable". A callable gives its
    module and qualified name; a name without a module ("resnet20") is one of this library's
    models."""
    if callable(arch):
        arch = f"{arch.__module__}:{arch.__qualname__}"
        if "<" in arch:
            raise ValueError(f"arch must be importable by name, got the local callable {arch}")
        return arch
    if not isinstance(arch, str) or not arch.strip(":"):
        raise TypeError(f"arch must be 'package.module:callable', a model name or a callable, "
                        f"got {arch!r}")
    return arch if ":" in arch else f"{LIBRARY_MODELS}:{arch}"


def import_reference(reference: str):
    """The object "package.module:name" (the name may be dotted, "module:Class.method") names;
    ImportError or AttributeError when it cannot be imported."""
    module_name, _, name = reference.partition(":")
    target = importlib.import_module(module_name)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def build_arch(arch, arch_kwargs: dict) -> nn.Module:
    """The dense model ``arch`` (see ``arch_reference``) builds from ``arch_kwargs``, imported
    by name: no import of the model zoo here. CheckpointError if it cannot be imported."""
    reference = arch_reference(arch)
    try:
        target = import_reference(reference)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"architecture {reference!r} cannot be imported: {exc}") from None
    return target(**arch_kwargs)


def lowrank_layers(model: nn.Module) -> dict[str, str]:
    """{name: scheme} of the low-rank layers (LowRankConv2d, LowRankLinear) of ``model``."""
    return {name: m.scheme for name, m in model.named_modules()
            if isinstance(m, LOWRANK_LAYERS)}


def save_model(model: nn.Module, path: str, arch=None, arch_kwargs=None,
               input_shape=None, metadata=None) -> None:
    """Writes ``model`` (dense, compressed or mixed) atomically to ``path``.

    arch / arch_kwargs: the callable that builds the dense model and its keyword arguments, so
        ``load_model(path)`` needs nothing else: "package.module:callable", the callable
        itself, or the name of one of this library's models (``arch_reference``). Leave them
        out for a model that cannot be built by name, and pass a freshly built dense instance
        to ``load_model`` instead.
    input_shape: (C, H, W) of one input, kept for exporting from the file alone.
    metadata: any plain-Python dict (e.g. accuracy, speed-up) stored alongside.
    """
    atomic_save({
        "format": MODEL_FORMAT,
        "arch": None if arch is None else arch_reference(arch),
        "arch_kwargs": dict(arch_kwargs or {}),
        "input_shape": None if input_shape is None else list(input_shape),
        "lowrank_layers": lowrank_layers(model),
        "state_dict": model.state_dict(),
        "metadata": dict(metadata or {}),
    }, path)


def load_model(path: str, model: nn.Module | None = None, device="cpu") -> nn.Module:
    """The model saved by ``save_model``, in eval mode, with every low-rank layer at its saved
    scheme and rank (``restore_lowrank``). ``model``: a freshly built instance of the
    architecture, needed when the file names none (``save_model``'s ``arch``); it is modified
    in place."""
    saved = load_file(path, "model file", ("format", "state_dict"), device)
    if saved["format"] != MODEL_FORMAT:
        raise CheckpointError(f"model file {path} has format {saved['format']!r}; this version "
                              f"reads {MODEL_FORMAT!r}")
    if model is None:
        if not saved.get("arch"):
            raise CheckpointError(f"model file {path} names no architecture; pass the dense "
                                  f"model it was made from as model=")
        model = build_arch(saved["arch"], saved["arch_kwargs"])
    try:
        restore_lowrank(model, saved["state_dict"])
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"model file {path} does not fit the model: "
                              f"{str(exc).splitlines()[0]}") from exc
    return model.to(device).eval()


def saved_input_shape(path: str) -> tuple[int, ...] | None:
    shape = load_file(path, "model file", ("format",)).get("input_shape")
    return None if shape is None else tuple(shape)


def to_conv_pairs(model: nn.Module) -> nn.Module:
    """Replaces, in place, every LowRankConv2d by its plain nn.Conv2d layers (same outputs: a
    pair, or three convs for tucker2) and every LowRankLinear by two nn.Linear; the result runs
    anywhere PyTorch does, without this library. Returns ``model``."""
    for name, layer in list(model.named_modules()):
        if isinstance(layer, LOWRANK_LAYERS):
            pair = plain_layers(layer)
            pair.train(layer.training)
            model.set_submodule(name, pair)
    return model


def _export_inputs(example_input: torch.Tensor, dynamic_batch: bool):
    """The example batch and dynamic-shape spec for exporting. torch.export specialises a
    dimension whose example size is 1, so a one-image example is repeated to two images."""
    if not dynamic_batch:
        return example_input, None
    if example_input.shape[0] < 2:
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    return example_input, ({0: torch.export.Dim("batch", min=1, max=65536)},)


def export_program(model: nn.Module, example_input: torch.Tensor, conv_pairs: bool = False,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode (a copy; ``model`` is untouched). The
    channel / spatial LowRankConv2d layers stay the library's op (loading the program then
    needs ``import trp_kernels``) unless ``conv_pairs`` turns them into plain convs first;
    tucker2 / decoupled layers are ATen convolutions either way."""
    model = copy.deepcopy(model).eval()
    if conv_pairs:
        to_conv_pairs(model)
    example_input, dynamic = _export_inputs(example_input, dynamic_batch)
    return torch.export.export(model, (example_input,), dynamic_shapes=dynamic)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str,
                dynamic_batch: bool = True) -> None:
    """ONNX file of ``model`` in eval mode (a copy, with plain convs: ONNX runtimes know no
    trp op). Input "input" [B, C, H, W], output "logits"; B is dynamic unless
    ``dynamic_batch`` is False. Needs the ``trp_kernels[onnx]`` extra (onnx, onnxscript);
    without it, a MissingExtra error naming it."""
    require("onnx", "onnxscript", purpose="export to ONNX")
    model = to_conv_pairs(copy.deepcopy(model).eval())
    example_input, dynamic = _export_inputs(example_input, dynamic_batch)
    with quiet_export():
        program = torch.onnx.export(model, (example_input,), dynamo=True,
                                    dynamic_shapes=dynamic, input_names=["input"],
                                    output_names=["logits"], verbose=False)
    program.save(path)
