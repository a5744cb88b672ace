"""Low-rank convolution on the ResNet-20 layer shapes: the trp op against two plain convs and
the dense conv it replaces.

impl: `trp` (tk.lowrank_conv2d), `two_convs` (two F.conv2d calls from Python), `dense`
(F.conv2d with the reconstructed full weight, reconstruction not timed). Ranks are a fixed
fraction of each layer's full rank (TRP at energy 0.9 keeps about this much on CIFAR).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trp_kernels as tk
from trp_kernels import factorization
from trp_kernels.conv import reference_lowrank_conv2d

from conftest import QUICK, devices
from layer_sets import load

RANK_FRACTION = 0.5


def resnet20_shapes():
    seen = {}
    for layer in load()["resnet20"]:
        key = (layer["in_channels"], layer["out_channels"], tuple(layer["stride"]),
               tuple(layer["input_hw"]))
        seen.setdefault(key, layer)
    return list(seen.values())


def case_name(layer, scheme, batch):
    s = layer["stride"][0]
    return (f"r20-{layer['in_channels']}to{layer['out_channels']}-s{s}-"
            f"{layer['input_hw'][0]}px-{scheme}-b{batch}")


CASES = [(layer, scheme) for layer in resnet20_shapes() for scheme in ("channel", "spatial")]
BATCH = 8 if QUICK else 128


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("impl", ["trp", "two_convs", "dense"])
@pytest.mark.parametrize("layer,scheme", CASES, ids=[case_name(l, s, BATCH) for l, s in CASES])
def test_lowrank_conv2d_forward(bench, layer, scheme, impl, device):
    g = torch.Generator().manual_seed(0)
    C, N = layer["in_channels"], layer["out_channels"]
    weight_shape = (N, C, 3, 3)
    rank = max(1, int(RANK_FRACTION * factorization.full_rank(weight_shape, scheme)))
    w1_shape, w2_shape = factorization.factor_shapes(weight_shape, rank, scheme)
    x = torch.randn(BATCH, C, *layer["input_hw"], generator=g).to(device)
    w1 = torch.randn(w1_shape, generator=g).to(device)
    w2 = torch.randn(w2_shape, generator=g).to(device)
    bias = torch.randn(N, generator=g).to(device)
    stride, padding = tuple(layer["stride"]), tuple(layer["padding"])
    if impl == "trp":
        fn = lambda: tk.lowrank_conv2d(x, w1, w2, bias, stride, padding, 1, scheme)
    elif impl == "two_convs":
        fn = lambda: reference_lowrank_conv2d(x, w1, w2, bias, stride, padding, 1, scheme)
    else:
        dense = factorization.full_weight(w1, w2, scheme)
        fn = lambda: F.conv2d(x, dense, bias, stride, padding)
    with torch.no_grad():
        bench(case_name(layer, scheme, BATCH), fn, device)
