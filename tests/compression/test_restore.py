"""restore_lowrank in every scheme (one SchemeCase each, tests/scheme_cases.py): a compressed
model's state_dict, with layers kept dense among the factorised ones, loads into a freshly
built dense model, or into one decomposed differently, and computes the same outputs; with the
pointwise scheme beside a k x k one, its 1x1 convs and linear layers (LowRankLinear) too."""

from __future__ import annotations

import copy

import pytest
import torch
from scheme_cases import every_scheme
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from small_models import SmallNet
from torch import nn

import trp_kernels as tk
from trp_kernels.compression import lowrank_layers
from trp_kernels.schemes import LowRankLinear
from trp_kernels.schemes.layer_kinds import LOWRANK_LAYERS


def ranks_of(model):
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LOWRANK_LAYERS)}


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def trained_like(model):
    """``model`` with non-trivial BatchNorm statistics, so that buffers must load too."""
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 16, 16))
    return model.eval()


def compressed(case):
    """SmallNet (as ``case`` adapts it) in ``case``'s scheme: the stem skipped, body.5 at a low
    rank, body.0 at full rank, which no scheme makes cheaper, so the dense fallback keeps it a
    plain conv."""
    torch.manual_seed(0)
    model = trained_like(case.adapt(SmallNet()))
    tk.decompose_model(model, case.name, rank=case.fraction, layers=["body.5"])
    tk.decompose_model(model, case.name, layers=["body.0"])
    return model


@every_scheme
def test_a_fresh_dense_model_takes_the_compressed_state_dict(case):
    model = compressed(case)
    assert set(lowrank_layers(model)) == {"body.5"}          # body.0 kept dense
    state = model.state_dict()
    fresh = case.adapt(SmallNet())
    with pytest.raises(RuntimeError, match="body.5.weight"):
        fresh.load_state_dict(state)
    assert tk.restore_lowrank(fresh, state) is fresh
    fresh.load_state_dict(state)
    assert lowrank_layers(fresh) == {"body.5": case.name}
    assert ranks_of(fresh) == ranks_of(model)
    assert type(fresh.stem) is nn.Conv2d and type(fresh.body[0]) is nn.Conv2d
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x))


@every_scheme
def test_a_model_decomposed_otherwise_takes_it_too(case):
    """The regression this guards: a freshly decomposed model whose layers differ from the
    compressed one's (other ranks, another scheme, a layer factorised that was kept dense)."""
    model = compressed(case)
    state = model.state_dict()
    # tucker2 factorises no 1x1 conv: pointwise's model is decomposed otherwise by its ranks
    other = {"tucker2": "channel", "pointwise": "pointwise"}.get(case.name, "tucker2")
    fresh = case.adapt(SmallNet())
    tk.decompose_model(fresh, other, rank=1, skip=())          # every layer factorised
    assert set(lowrank_layers(fresh)) == {"stem", *case.small_net_layers}
    tk.restore_lowrank(fresh, state)
    fresh.load_state_dict(state)
    assert lowrank_layers(fresh) == {"body.5": case.name}
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x))


def test_schemes_and_ranks_mixed_in_one_model():
    torch.manual_seed(0)
    model = trained_like(SmallNet())
    tk.decompose_model(model, "tucker2", rank=(0.25, 0.5), layers=["stem"])
    tk.decompose_model(model, "spatial", rank=2, layers=["body.0"])
    tk.decompose_model(model, "channel", rank=3, layers=["body.5"])
    fresh = copy.deepcopy(SmallNet())
    tk.restore_lowrank(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert lowrank_layers(fresh) == {"stem": "tucker2", "body.0": "spatial", "body.5": "channel"}
    assert ranks_of(fresh) == {"stem": (1, 4), "body.0": 2, "body.5": 3}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x))


def test_a_kh_by_1_kernel_keeps_the_scheme_it_has():
    """A (3, 1) kernel's channel and spatial factors are the same tensors; a layer that is
    already of one of the two keeps it, and either computes the saved layer's outputs."""
    conv = nn.Conv2d(4, 6, (3, 1), padding=(1, 0))
    spatial = nn.Sequential(tk.LowRankConv2d.from_conv(conv, "spatial", rank=2))
    state = spatial.state_dict()
    fresh = nn.Sequential(tk.LowRankConv2d.from_conv(conv, "spatial", rank=3))
    tk.restore_lowrank(fresh, state)
    fresh.load_state_dict(state)
    assert fresh[0].scheme == "spatial" and fresh[0].rank == 2
    dense = nn.Sequential(nn.Conv2d(4, 6, (3, 1), padding=(1, 0)))
    tk.restore_lowrank(dense, state)
    dense.load_state_dict(state)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(outputs(dense, x), outputs(spatial, x))


def test_layers_the_state_dict_does_not_name_are_left_alone():
    model = SmallNet()
    tk.decompose_model(model, "channel", rank=2, layers=["body.0"])
    state = {k: v for k, v in model.state_dict().items() if k.startswith("body.0.")}
    fresh = SmallNet()
    tk.decompose_model(fresh, "channel", rank=2, layers=["body.5"])
    tk.restore_lowrank(fresh, state)
    assert lowrank_layers(fresh) == {"body.0": "channel", "body.5": "channel"}


def test_bad_arguments_name_themselves():
    model = SmallNet()
    with pytest.raises(TypeError, match="state_dict"):
        tk.restore_lowrank(model, [1, 2])
    with pytest.raises(TypeError, match="model"):
        tk.restore_lowrank("SmallNet", {})
    with pytest.raises(ValueError, match="single conv"):
        tk.restore_lowrank(nn.Conv2d(3, 8, 3), {})
    bad = {"body.0.weight1": torch.zeros(2, 8, 3, 3), "body.0.weight2": torch.zeros(7, 2, 1, 1)}
    with pytest.raises(ValueError, match="'body.0'.*fit no scheme of a 16x8x3x3 conv"):
        tk.restore_lowrank(model, bad)


def pointwise_compressed():
    """SmallNet in channel with ``pointwise``: body.5 (1x3) in channel, the 1x1 conv body.4 and
    the classifier in pointwise (a LowRankLinear), body.0 at full rank kept dense."""
    torch.manual_seed(0)
    model = trained_like(SmallNet())
    tk.decompose_model(model, "channel", rank=0.25, layers=["body.4", "body.5", "head"],
                       pointwise=True)
    tk.decompose_model(model, "channel", layers=["body.0"])
    assert lowrank_layers(model) == {"body.4": "pointwise", "body.5": "channel",
                                     "head": "pointwise"}
    return model


def test_pointwise_layers_and_linear_layers_restore_beside_kept_dense_ones():
    model = pointwise_compressed()
    state = model.state_dict()
    fresh = SmallNet()
    tk.restore_lowrank(fresh, state)
    fresh.load_state_dict(state)
    assert lowrank_layers(fresh) == lowrank_layers(model)
    assert ranks_of(fresh) == ranks_of(model) == {"body.4": 4, "body.5": 8, "head": 3}
    assert isinstance(fresh.head, LowRankLinear) and fresh.head.weight1.shape == (3, 32)
    assert type(fresh.stem) is nn.Conv2d and type(fresh.body[0]) is nn.Conv2d
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x))


def test_a_linear_layer_goes_dense_or_low_rank_as_the_state_dict_says():
    """A fresh model decomposed with every layer pointwise-factorised (other ranks) takes a
    state_dict whose classifier is dense, and a dense model one whose classifier is not."""
    dense_head = SmallNet()
    tk.decompose_model(dense_head, "channel", rank=2, layers=["body.5"])
    fresh = SmallNet()
    tk.decompose_model(fresh, "channel", rank=1, skip=(), pointwise=True)
    assert isinstance(fresh.head, LowRankLinear)
    tk.restore_lowrank(fresh, dense_head.state_dict())
    fresh.load_state_dict(dense_head.state_dict())
    assert type(fresh.head) is nn.Linear and type(fresh.body[4]) is nn.Conv2d
    assert lowrank_layers(fresh) == {"body.5": "channel"}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(outputs(fresh, x), outputs(dense_head, x))

    model = pointwise_compressed()
    tk.restore_lowrank(fresh, model.state_dict())          # back again, at the saved ranks
    fresh.load_state_dict(model.state_dict())
    assert ranks_of(fresh) == ranks_of(model)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x))


def test_a_model_file_of_a_pointwise_model_loads_with_its_layers(tmp_path):
    model = pointwise_compressed()
    tk.save_model(model, str(tmp_path / "model.pt"))
    loaded = tk.load_model(str(tmp_path / "model.pt"), SmallNet())
    assert lowrank_layers(loaded) == lowrank_layers(model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x))


def test_linear_factors_of_the_wrong_shape_name_the_layer():
    bad = {"head.weight1": torch.zeros(3, 31), "head.weight2": torch.zeros(10, 3)}
    with pytest.raises(ValueError, match="'head'.*fit no scheme of a 10x32 linear layer"):
        tk.restore_lowrank(SmallNet(), bad)
    conv_shaped = {"head.weight1": torch.zeros(3, 32, 1, 1),
                   "head.weight2": torch.zeros(10, 3, 1, 1)}
    with pytest.raises(ValueError, match="'head'"):
        tk.restore_lowrank(SmallNet(), conv_shaped)
