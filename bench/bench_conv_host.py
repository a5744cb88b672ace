"""Host cost of one low-rank conv call: tiny tensors on the CPU, where the arithmetic is a few
hundred multiply-adds and the time is what the call costs the host (argument handling,
dispatch, autograd, the kernel's own checks and allocations). The same cost sits in front of
every GPU launch, where it decides whether the host keeps ahead of the device.

case: ``tiny-<scheme>-fwd`` (one call, no gradient) and ``tiny-<scheme>-fwdbwd`` (a call on
tensors that require grad, then ``torch.autograd.grad`` of it for all four tensors).
impl: ``trp`` -- tk.lowrank_conv2d, what LowRankConv2d runs; ``trp_torch_ops`` -- the op called
as ``torch.ops.trp.lowrank_conv2d`` (the checked path, taken by torch.compile's traces and by
arguments not in their plain form); ``torch_two_convs`` -- the same two thin convs as two
F.conv2d calls from Python, the cost to match (docs/cuda_conv.md, "Host cost per call").

Each round times ``CALLS`` calls in a row and reports the time per call. The test of ``trp``
also times it in turn with torch_two_convs, round by round, and records the median of the
per-round ratios (``ratio_to_two_convs``; likewise ``torch_ops_ratio_to_two_convs`` for
trp_torch_ops): a loaded machine shifts that ratio far less than the medians themselves.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import trp_kernels as tk
from trp_kernels.ops import ops
from trp_kernels.ops.conv import reference_lowrank_conv2d

from conftest import QUICK

SCHEMES = ("channel", "spatial")
IMPLS = ("trp", "trp_torch_ops", "torch_two_convs")
CALLS = 20 if QUICK else 200     # calls per timed round
ROUNDS = 5 if QUICK else 200     # rounds per impl (pytest-benchmark), and interleaved rounds
# C=4 -> r=2 -> N=4 on a 6x6 image, 3x3 kernel, padding 1, stride 1: tiny, every path taken
CHANNELS, RANK, OUT, SIZE = 4, 2, 4, 6


def case_inputs(scheme: str, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    w1_shape = (RANK, CHANNELS, 3, 3 if scheme == "channel" else 1)
    w2_shape = (OUT, RANK, 1, 1 if scheme == "channel" else 3)
    tensors = [torch.randn(shape, generator=g) for shape in
               ((1, CHANNELS, SIZE, SIZE), w1_shape, w2_shape, (OUT,))]
    return [t.requires_grad_(requires_grad) for t in tensors]


def call(impl: str, scheme: str):
    """The impl's forward as a function of (x, weight1, weight2, bias)."""
    if impl == "trp":
        return lambda x, w1, w2, b: tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, scheme)
    if impl == "trp_torch_ops":
        return lambda x, w1, w2, b: ops.lowrank_conv2d(x, w1, w2, b, [1, 1], [1, 1], [1, 1],
                                                       scheme)
    if scheme == "channel":
        return lambda x, w1, w2, b: F.conv2d(F.conv2d(x, w1, None, 1, 1), w2, b)
    return lambda x, w1, w2, b: F.conv2d(F.conv2d(x, w1, None, 1, (1, 0)), w2, b, 1, (0, 1))


def step(impl: str, scheme: str, backward: bool):
    """One timed call of the case: the forward, or the forward and its gradients."""
    inputs = case_inputs(scheme, backward)
    forward = call(impl, scheme)
    if not backward:
        return lambda: forward(*inputs)
    grad_y = torch.randn_like(forward(*inputs))
    return lambda: torch.autograd.grad(forward(*inputs), inputs, grad_y)


def per_call_seconds(fn, calls: int = CALLS) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved_ratio(trp, baseline, rounds: int = ROUNDS) -> float:
    """Median over rounds of trp's time per call over the baseline's, the two timed in turn."""
    ratios = [per_call_seconds(trp) / per_call_seconds(baseline) for _ in range(rounds)]
    return statistics.median(ratios)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny tensors never fill a parallel region, and idle OpenMP threads
    spinning on a CPU shared with other jobs would time the load, not the call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = [f"tiny-{scheme}-{direction}" for scheme in SCHEMES for direction in ("fwd", "fwdbwd")]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_conv_host_cost(benchmark, case, impl):
    _, scheme, direction = case.split("-")
    backward = direction == "fwdbwd"
    fn = step(impl, scheme, backward)
    # every impl computes the same thing
    torch.testing.assert_close(
        call(impl, scheme)(*case_inputs(scheme, False)),
        reference_lowrank_conv2d(*case_inputs(scheme, False), 1, 1, 1, scheme))
    benchmark.group = f"{case}@cpu"
    benchmark.extra_info.update(case=case, scheme=scheme, backward=backward,
                                threads=torch.get_num_threads(), calls_per_round=CALLS)
    if impl == "trp":
        per_call_seconds(fn, 50)  # warm-up, as pedantic does for the others
        benchmark.extra_info["ratio_to_two_convs"] = interleaved_ratio(
            fn, step("torch_two_convs", scheme, backward))
        benchmark.extra_info["torch_ops_ratio_to_two_convs"] = interleaved_ratio(
            step("trp_torch_ops", scheme, backward), step("torch_two_convs", scheme, backward))
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=CALLS, warmup_rounds=1)
