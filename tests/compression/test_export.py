"""Shipping a compressed model in every scheme (one SchemeCase each, tests/scheme_cases.py):
the model file restores every layer's scheme and rank (and names its architecture by an
importable reference, older files included), plain conv pairs, torch.export and ONNX Runtime."""

import logging
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from scheme_cases import every_scheme
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from testing import devices
from torch import nn

from trp_kernels.compression import decompose_model
from trp_kernels.compression.files import CheckpointError, atomic_save
from trp_kernels.compression.onnx_extra import REGISTRATION_LOGGER, MissingExtra
from trp_kernels.compression.export import (export_onnx, export_program, load_model,
                                            lowrank_layers, save_model, saved_input_shape,
                                            to_conv_pairs)
from trp_kernels.schemes.layers import LowRankConv2d
from trp_kernels.schemes.lowrank_linear import LowRankLinear
from trp_kernels.models import resnet20

ARCH = {"in_channels": 1, "stage_strides": [1, 1, 2]}


def compressed_model(device="cpu"):
    """A digits ResNet-20 with per-layer ranks from an energy rule, both schemes mixed, and
    non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = resnet20(**ARCH).to(device)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8, device=device))
    decompose_model(model, "channel", energy=0.7, skip=("conv1", "layer3.2.conv1"))
    decompose_model(model, "spatial", energy=0.8, skip=("conv1",))
    return model.eval()


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("device", devices)
def test_save_and_load_restore_every_rank(tmp_path, device):
    model = compressed_model(device)
    path = str(tmp_path / "model.pt")
    save_model(model, path, "trp_kernels.models:resnet20", ARCH, input_shape=(1, 8, 8),
               metadata={"note": 1})
    loaded = load_model(path, device=device)
    assert lowrank_layers(loaded) == lowrank_layers(model)
    assert set(lowrank_layers(model).values()) == {"channel", "spatial"}
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankConv2d)}
    assert len(set(ranks.values())) > 2
    assert ranks == {n: m.rank for n, m in loaded.named_modules() if isinstance(m, LowRankConv2d)}
    x = torch.randn(5, 1, 8, 8, device=device)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x))
    assert saved_input_shape(path) == (1, 8, 8)


def test_a_model_of_your_own_loads_into_a_fresh_instance(tmp_path):
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))

    model = build()
    decompose_model(model, "channel", rank=2)
    path = str(tmp_path / "mine.pt")
    save_model(model, path)
    with pytest.raises(CheckpointError, match="names no architecture"):
        load_model(path)
    loaded = load_model(path, model=build())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(outputs(loaded, x), outputs(model.eval(), x))


def small_net(channels=8):
    """A model of your own, importable by name (this test module's)."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3))


def test_the_architecture_is_an_importable_reference(tmp_path):
    model = small_net(6)
    decompose_model(model, "spatial", rank=2, skip=())
    path = str(tmp_path / "own.pt")
    save_model(model, path, small_net, {"channels": 6})
    assert torch.load(path, weights_only=True)["arch"] == f"{__name__}:small_net"
    loaded = load_model(path)
    assert lowrank_layers(loaded) == {"0": "spatial", "2": "spatial"}
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(outputs(loaded, x), outputs(model.eval(), x))
    with pytest.raises(ValueError, match="local"):
        save_model(model, path, lambda: small_net(6))
    with pytest.raises(TypeError, match="arch"):
        save_model(model, path, 3)


def test_files_naming_a_library_model_without_its_module_still_load(tmp_path):
    """Model files written before architectures were references name one of this library's
    models alone ("resnet20"); they load as trp_kernels.models:resnet20."""
    model = compressed_model()
    path = str(tmp_path / "older.pt")
    atomic_save({"format": "trp_kernels.model/1", "arch": "resnet20", "arch_kwargs": ARCH,
                 "input_shape": [1, 8, 8], "lowrank_layers": lowrank_layers(model),
                 "state_dict": model.state_dict(), "metadata": {}}, path)
    loaded = load_model(path)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x))
    save_model(model, path, "resnet20", ARCH)
    assert torch.load(path, weights_only=True)["arch"] == "trp_kernels.models:resnet20"


def bad_model_files(directory):
    """(name, path, the message's end) of every kind of file load_model refuses for what it
    is, each message one complete sentence."""
    good = str(directory / "good.pt")
    save_model(compressed_model(), good, "resnet20", ARCH)
    data = open(good, "rb").read()
    files = {
        "missing": (None, "does not exist"),
        "a directory": ("dir", "is a directory, not a file"),
        "empty": (b"", "is empty (0 bytes): it was never completely written; write it again"),
        "truncated": (data[:len(data) // 2], "is truncated or damaged: its zip archive is "
                      "incomplete"),
        "random bytes": (bytes(range(7, 256)) * 8, "is not a file written by torch.save (it is "
                         "neither a zip archive nor a pickle)"),
        "text": (b"not a checkpoint", "is not a file written by torch.save"),
        "a pickled module": ("module", "holds pickled Python objects other than tensors and "
                             "plain values (such as a whole nn.Module saved with "
                             "torch.save(model)), which trp_kernels does not unpickle"),
        "a state_dict": ("state_dict", "holds a state_dict (layer names to tensors), not a "
                         "model file written by trp_kernels"),
        "another dict": ("dict", "lacks the entries ['format', 'state_dict']"),
    }
    out = []
    for name, (content, message) in files.items():
        path = directory / name.replace(" ", "_")
        if content == "dir":
            path.mkdir()
        elif content == "module":
            torch.save(nn.Conv2d(1, 2, 3), path)
        elif content == "state_dict":
            torch.save(nn.Conv2d(1, 2, 3).state_dict(), path)
        elif content == "dict":
            torch.save({"epochs": 3}, path)
        elif content is not None:
            path.write_bytes(content)
        out.append((name, str(path), message))
    return out


def test_bad_files_are_reported_in_one_complete_sentence(tmp_path):
    for name, path, message in bad_model_files(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        text = str(info.value)
        assert text.startswith(f"model file {path} ") and message in text, (name, text)
        assert "\n" not in text and "weights_only" not in text, (name, text)
    wrong = str(tmp_path / "wrong.pt")
    save_model(compressed_model(), wrong, "resnet32", ARCH)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model(wrong)
    unknown = str(tmp_path / "unknown.pt")
    save_model(compressed_model(), unknown, "no_such_package.models:resnet20", ARCH)
    with pytest.raises(CheckpointError, match="cannot be imported"):
        load_model(unknown)


@pytest.mark.parametrize("device", devices)
def test_conv_pairs_compute_the_same(device):
    model = compressed_model(device)
    x = torch.randn(3, 1, 8, 8, device=device)
    expected = outputs(model, x)
    to_conv_pairs(model)
    assert not lowrank_layers(model)
    torch.testing.assert_close(outputs(model, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv_pairs", [False, True])
def test_torch_export_round_trip(tmp_path, conv_pairs):
    model = compressed_model()
    program = export_program(model, torch.randn(1, 1, 8, 8), conv_pairs=conv_pairs)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("trp.lowrank_conv2d" in t for t in targets) != conv_pairs
    path = str(tmp_path / "model.pt2")
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    x = torch.randn(6, 1, 8, 8)                       # another batch size: the batch is dynamic
    torch.testing.assert_close(loaded(x), outputs(model, x), rtol=1e-4, atol=1e-5)
    assert lowrank_layers(model)                      # the model itself is untouched


def test_onnx_runs_in_onnxruntime_like_pytorch(tmp_path):
    model = compressed_model()
    path = str(tmp_path / "model.onnx")
    export_onnx(model, torch.randn(2, 1, 8, 8), path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 8, 8)
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    np.testing.assert_allclose(logits, outputs(model, x).numpy(), rtol=1e-4, atol=1e-5)


def small_dense_model():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, (3, 5), padding=(2, 1), dilation=(2, 1)),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


def tensor_schemes_model():
    """A small net with tucker2 layers (energy ranks, two per layer) and a decoupled layer, and
    non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = small_dense_model().train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8))
    decompose_model(model, "tucker2", energy=0.7, skip=("0", "8"))
    decompose_model(model, "decoupled", energy=0.8, skip=("0",))
    return model.eval()


def ranks_of(model):
    return {n: m.rank for n, m in model.named_modules()
            if isinstance(m, (LowRankConv2d, LowRankLinear))}


def saved_and_loaded(model, path, dense=None):
    """(loaded, x, expected): ``model`` saved without its architecture and loaded into
    ``dense`` (default a fresh small_dense_model); the file restores every layer's scheme, rank
    and outputs without being told them."""
    x = torch.randn(5, 1, 8, 8)
    expected = outputs(model, x)
    save_model(model, path)
    loaded = load_model(path, model=small_dense_model() if dense is None else dense)
    assert lowrank_layers(loaded) == lowrank_layers(model)
    assert ranks_of(loaded) == ranks_of(model)
    torch.testing.assert_close(outputs(loaded, x), expected)
    return loaded, x, expected


def exported_ops(model, x, expected, tmp_path) -> set[str]:
    """The ops of ``model``'s torch.export program, after checking that the program and the
    ONNX file (in ONNX Runtime) both compute ``expected`` on ``x``."""
    program = export_program(model, torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-4, atol=1e-5)
    onnx_path = str(tmp_path / "model.onnx")
    export_onnx(model, torch.randn(2, 1, 8, 8), onnx_path)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_tucker2_and_decoupled_in_one_model_save_load_and_pair(tmp_path):
    model = tensor_schemes_model()
    assert lowrank_layers(model) == {"2": "tucker2", "5": "tucker2", "8": "decoupled"}
    assert len(set(ranks_of(model).values())) == 3
    loaded, x, expected = saved_and_loaded(model, str(tmp_path / "model.pt"))
    # plain convs: three per tucker2 layer, a 1x1 and a grouped conv per decoupled layer
    plain = to_conv_pairs(loaded)
    assert not lowrank_layers(plain)
    assert len(plain[2]) == len(plain[5]) == 3 and len(plain[8]) == 2 and plain[8][1].groups == 12
    torch.testing.assert_close(outputs(plain, x), expected, rtol=1e-4, atol=1e-5)
    targets = exported_ops(model, x, expected, tmp_path)
    assert not any("trp." in t for t in targets)     # ATen convolutions only


def decomposed(case):
    """small_dense_model (adapted to the scheme) with every layer but the first conv in
    ``case``'s scheme at a fraction of its full rank (the dense fallback may keep some), and
    non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = case.adapt(small_dense_model()).train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8))
    decompose_model(model, case.name, rank=case.fraction, skip=("0",))
    return model.eval()


@every_scheme
def test_every_scheme_saves_loads_pairs_and_exports(case, tmp_path):
    model = decomposed(case)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LowRankConv2d)}
    assert layers and set(lowrank_layers(model).values()) == {case.name}
    # pointwise acts on the classifier too, as skip names the first conv alone
    assert isinstance(model[-1], LowRankLinear) == (case.name == "pointwise")
    loaded, x, expected = saved_and_loaded(model, str(tmp_path / "model.pt"),
                                           case.adapt(small_dense_model()))
    # torch.export keeps the library's op where the scheme runs it
    targets = exported_ops(model, x, expected, tmp_path)
    assert any("trp.lowrank_conv2d" in t for t in targets) == case.scheme.fused_op
    # plain convs, one per thin conv of each layer
    plain = to_conv_pairs(loaded)
    assert not lowrank_layers(plain)
    for name, layer in layers.items():
        convs = plain.get_submodule(name)
        assert [c.groups for c in convs] == [t.groups for t in layer.thin_convs()]
    torch.testing.assert_close(outputs(plain, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_onnx_export_without_the_extra_is_one_clear_line(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)         # as if it were not installed
    path = tmp_path / "model.onnx"
    with pytest.raises(MissingExtra) as caught:
        export_onnx(small_dense_model(), torch.randn(2, 1, 8, 8), str(path))
    message = str(caught.value)
    assert message == (f'export to ONNX needs {module}, not installed: '
                       f'pip install "trp_kernels[onnx]"')
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ValueError)
    assert not path.exists()


def test_onnx_export_prints_nothing_about_other_packages(tmp_path, recwarn):
    """torch.onnx logs on every export that torchvision's ops cannot be registered (through its
    own stderr handler), and its pytree code raises a FutureWarning: neither says anything
    about the model."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(REGISTRATION_LOGGER)
    logger.addHandler(handler)
    try:
        export_onnx(compressed_model(), torch.randn(2, 1, 8, 8), str(tmp_path / "model.onnx"))
    finally:
        logger.removeHandler(handler)
    assert not records
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
