"""bench/layer_sets.json, the benchmarks' own list of layer shapes: every entry is a decomposable
conv of the library's own ResNets (kernel larger than 1x1, groups 1, the stem excluded) in forward
order, with the input size of the usual resolution, and its matrix shapes follow
trp_kernels.schemes.factorization."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from trp_kernels import models

from trp_kernels.schemes import factorization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_SETS = os.path.join(ROOT, "bench", "layer_sets.json")
RESOLUTION = {"resnet20": 32, "resnet56": 32, "resnet18": 224, "resnet50": 224}


def _load() -> dict:
    with open(LAYER_SETS) as f:
        return json.load(f)


def _decomposable_convs(network: str) -> list[dict]:
    """What layer_sets.json should list for ``network``, read off a forward pass of the model
    built on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        model = models.create_model(network)
        x = torch.empty(1, 3, RESOLUTION[network], RESOLUTION[network])
    seen: list[dict] = []

    def record(conv, inputs, output):
        if conv.groups == 1 and conv.kernel_size[0] * conv.kernel_size[1] > 1:
            seen.append({
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "kernel": list(conv.kernel_size),
                "stride": list(conv.stride),
                "padding": list(conv.padding),
                "input_hw": list(inputs[0].shape[-2:]),
            })

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen[1:]   # the stem (first conv) stays dense


@pytest.mark.parametrize("network", list(RESOLUTION))
def test_layer_sets_are_the_models_decomposable_convs(network):
    listed = [{k: layer[k] for k in ("in_channels", "out_channels", "kernel", "stride",
                                     "padding", "input_hw")}
              for layer in _load()[network]]
    assert listed == _decomposable_convs(network)


def test_matrix_shapes():
    data = _load()
    assert set(RESOLUTION) <= set(data)
    for network in RESOLUTION:
        assert data[network]
        for layer in data[network]:
            shape = (layer["out_channels"], layer["in_channels"], *layer["kernel"])
            assert tuple(layer["channel_matrix"]) == factorization.matrix_shape(shape, "channel")
            assert tuple(layer["spatial_matrix"]) == factorization.matrix_shape(shape, "spatial")


HOST_RESULT = os.path.join(ROOT, "bench", "results", "cpu-2core-conv-host-20261207.json")


def test_conv_host_result_meets_its_goal(capsys):
    # The committed run of bench/bench_conv_host.py (docs/cuda_conv.md, "Host cost per call"):
    # every case and impl, and a call of tk.lowrank_conv2d at most 1.2x two F.conv2d calls,
    # forward and forward + backward, by the ratio timed in turn.
    import sys
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import summarize

    with open(HOST_RESULT) as f:
        data = json.load(f)
    grid = {(b["extra_info"]["case"], b["params"]["impl"]) for b in data["benchmarks"]}
    cases = {f"tiny-{s}-{d}" for s in ("channel", "spatial") for d in ("fwd", "fwdbwd")}
    assert grid == {(c, i) for c in cases for i in ("trp", "trp_torch_ops", "torch_two_convs")}
    ratios = summarize.interleaved_ratios(HOST_RESULT)
    assert {case.split("@")[0] for case in ratios} == cases
    for case, r in ratios.items():
        assert r["ratio_to_two_convs"] <= 1.2, case
    summarize.print_tables(HOST_RESULT)
    assert "interleaved: ratio_to_two_convs" in capsys.readouterr().out
