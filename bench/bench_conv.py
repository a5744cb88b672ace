"""Low-rank convolution on ResNet-20 and ResNet-18 3x3 layer shapes at TRP-like ranks
(conv_cases.py), and on the decomposable conv stack of both networks against its dense original.

impl: `fused`, `two_convs`, `dense` -- tk.lowrank_conv2d with TRP_CONV_IMPL forcing that
implementation; `two_convs_r8` -- two_convs with the rank padded by zeros to a multiple of 8
(conv_cases.padded_rank: the channel counts cuDNN's tensor-core kernels prefer, so that the
baseline is fair); `auto` -- its measured choice, what LowRankConv2d runs; `dense_model`
(stacks only) -- F.conv2d with the dense weights the factors stand for. CUDA times are device
time per call, the host's apart (bench/conftest.py, bench/cuda_timing.py). Every benchmark
records its case, FLOPs, fewest bytes and H100 roofline time in extra_info, which
bench/report_conv.py reads.

CUDA: batch 1 and 128, float32 / bfloat16 / float16, NCHW and channels_last, forward and
forward + backward (torch defaults: cuDNN may use tf32 for float32, and so does the fused kernel).
CPU, which has no fused kernel: two_convs and dense on the ResNet-20 shapes, float32, NCHW,
forward, batch 8 under TRP_BENCH_QUICK=1 (CI), else 128, next to `torch_two_convs` (the same two
F.conv2d calls made from Python: the op's own overhead) and `dense_model` (F.conv2d with the
dense weight: the layer before decomposition).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import trp_kernels as tk
from trp_kernels.ops import backends
from trp_kernels.ops.conv import reference_lowrank_conv2d

from conftest import QUICK, devices
from conv_cases import (DTYPES, NETWORKS, Layer, layer_inputs, layers, network_layers,
                        padded_rank, roofline)

DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
LOWRANK_IMPLS = ("fused", "two_convs", "dense", "auto")
FORCED = {"two_convs_r8": "two_convs"}   # the implementation an extra impl runs


@dataclass(frozen=True)
class LayerCase:
    layer: Layer
    scheme: str
    batch: int
    dtype: str
    channels_last: bool
    backward: bool
    device: str

    @property
    def name(self) -> str:
        layout = "cl" if self.channels_last else "nchw"
        direction = "fwdbwd" if self.backward else "fwd"
        return f"{self.layer.name}-{self.scheme}-b{self.batch}-{self.dtype}-{layout}-{direction}"


@dataclass(frozen=True)
class StackCase:
    network: str
    scheme: str
    batch: int
    dtype: str
    channels_last: bool
    device: str

    @property
    def name(self) -> str:
        layout = "cl" if self.channels_last else "nchw"
        return f"{NETWORKS[self.network]}-stack-{self.scheme}-b{self.batch}-{self.dtype}-{layout}"


def layer_cases():
    cases = []
    for device in devices:
        if device == "cuda":
            cases += [LayerCase(layer, scheme, batch, dtype, cl, backward, device)
                      for layer in layers("resnet20") + layers("resnet18")
                      for scheme in ("channel", "spatial") for batch in (1, 128)
                      for dtype in DTYPES for cl in (False, True) for backward in (False, True)]
        else:
            cases += [LayerCase(layer, scheme, 8 if QUICK else 128, "f32", False, False, device)
                      for layer in layers("resnet20") for scheme in ("channel", "spatial")]
    return cases


def stack_cases():
    return [StackCase(network, scheme, batch, dtype, cl, "cuda")
            for network in NETWORKS for scheme in ("channel", "spatial") for batch in (1, 128)
            for dtype in ("f32", "bf16") for cl in (False, True)] if "cuda" in devices else []


def impls(device, stack=False):
    if device == "cuda":
        return (("dense_model",) if stack else ("two_convs_r8",)) + LOWRANK_IMPLS
    return ("two_convs", "dense", "torch_two_convs", "dense_model")


LAYER_PARAMS = [(case, impl) for case in layer_cases() for impl in impls(case.device)]
STACK_PARAMS = [(case, impl) for case in stack_cases() for impl in impls(case.device, True)]

_inputs: dict = {}


def cached(key, make):
    """The inputs of the current case, shared by its impls (which run one after another)."""
    if key not in _inputs:
        _inputs.clear()
        _inputs[key] = make()
    return _inputs[key]


@pytest.mark.parametrize("case,impl", LAYER_PARAMS,
                         ids=[f"{c.name}-{i}-{c.device}" for c, i in LAYER_PARAMS])
def test_lowrank_conv2d(bench, benchmark, case: LayerCase, impl):
    layer = case.layer
    x, w1, w2, bias, dense = cached(case, lambda: layer_inputs(
        layer, case.scheme, case.batch, case.dtype, case.channels_last, case.device))
    if impl == "two_convs_r8":
        w1, w2 = padded_rank(w1, w2)
    args = (layer.stride, layer.padding, 1, case.scheme)
    if impl == "torch_two_convs":
        fn = lambda: reference_lowrank_conv2d(x, w1, w2, bias, *args)  # noqa: E731
    elif impl == "dense_model":
        fn = lambda: F.conv2d(x, dense, bias, layer.stride, layer.padding)  # noqa: E731
    elif case.backward:
        inputs = [t.detach().requires_grad_() for t in (x, w1, w2, bias)]
        grad_y = torch.randn_like(tk.lowrank_conv2d(*[t.detach() for t in inputs], *args))
        fn = lambda: torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)  # noqa: E731
    else:
        fn = lambda: tk.lowrank_conv2d(x, w1, w2, bias, *args)  # noqa: E731
    benchmark.extra_info.update(
        case=case.name, layer=layer.name, scheme=case.scheme, batch=case.batch,
        dtype=DTYPE_NAMES[case.dtype], channels_last=case.channels_last,
        backward=case.backward, rank=w1.shape[0],
        **roofline(layer, case.scheme, case.batch, DTYPE_NAMES[case.dtype], case.backward,
                   "dense" if impl == "dense_model" else impl))
    with backends.forced(conv=FORCED.get(impl, impl if impl in LOWRANK_IMPLS else "auto")):
        bench(case.name, fn, case.device)


@pytest.mark.parametrize("case,impl", STACK_PARAMS,
                         ids=[f"{c.name}-{i}-{c.device}" for c, i in STACK_PARAMS])
def test_conv_stack(bench, benchmark, case: StackCase, impl):
    """Every decomposable conv of the network once, each on its own input (the layers between
    them, identical in both models, are left out): the model-level FLOP speed-up of TRP next to
    the latency speed-up it buys."""
    stack = network_layers(case.network)
    per_layer = cached(case, lambda: [
        layer_inputs(layer, case.scheme, case.batch, case.dtype, case.channels_last, case.device,
                     seed=i) for i, layer in enumerate(stack)])
    if impl == "dense_model":
        def fn():
            return [F.conv2d(x, dense, bias, layer.stride, layer.padding)
                    for layer, (x, _, _, bias, dense) in zip(stack, per_layer)]
    else:
        def fn():
            return [tk.lowrank_conv2d(x, w1, w2, bias, layer.stride, layer.padding, 1, case.scheme)
                    for layer, (x, w1, w2, bias, _) in zip(stack, per_layer)]
    dtype = DTYPE_NAMES[case.dtype]
    dense_rf = [roofline(l, case.scheme, case.batch, dtype, False, "dense") for l in stack]
    lowrank_rf = [roofline(l, case.scheme, case.batch, dtype, False) for l in stack]
    benchmark.extra_info.update(
        case=case.name, network=case.network, scheme=case.scheme, batch=case.batch, dtype=dtype,
        channels_last=case.channels_last, layers=len(stack),
        flop_speedup=sum(l.macs(None) for l in stack) / sum(l.macs(case.scheme) for l in stack),
        flops=sum(r["flops"] for r in (dense_rf if impl == "dense_model" else lowrank_rf)),
        min_bytes=sum(r["min_bytes"] for r in lowrank_rf),
        predicted_s=sum(r["predicted_s"] for r in (dense_rf if impl == "dense_model" else lowrank_rf)))
    with torch.no_grad(), backends.forced(conv="auto" if impl == "dense_model" else impl):
        bench(case.name, fn, case.device)
