"""Measured latency: the library's one timer (``LatencyMeter``, which the trainer's reports use
too) and the measured choice of ``decompose_model(measure=...)``: whether a factorised layer is
really faster, in the runtime that will run it (``choose_faster``; docs/compression.md).

``LatencyMeter("torch")`` times modules as PyTorch runs them (eval mode, inference mode, CUDA
synchronised around every round); ``LatencyMeter("onnxruntime")`` exports each module (low-rank
layers as plain conv pairs) to ONNX in memory and times an InferenceSession with
torch.get_num_threads() threads, on the CPU or, for a CUDA input, the CUDA provider.
Modules compared with each other are timed in interleaved rounds after a warm-up, so drift of
the machine's speed hits both alike; each round runs a module enough times to last at least
``min_round_s``; the result is the median per call.

Tests and callers replace the clock by subclassing and overriding ``LatencyMeter.seconds``.
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..schemes.costs import run_hooked
from ..schemes.layer_kinds import LOWRANK_LAYERS, plain_layers
from .export import to_conv_pairs

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    median: float          # seconds per call
    stderr: float          # standard error of the median (0 when unknown)


def _timing(times: list[float]) -> Timing:
    median = statistics.median(times)
    if len(times) < 4:
        return Timing(median, 0.0)
    q = statistics.quantiles(times, n=4)
    sigma = (q[2] - q[0]) / 1.349          # robust standard deviation
    return Timing(median, 1.2533 * sigma / math.sqrt(len(times)))


def slower_beyond_noise(after: Timing, before: Timing) -> bool:
    """Whether ``after`` is slower than ``before`` by more than two combined standard errors."""
    return after.median - before.median > 2.0 * math.hypot(after.stderr, before.stderr)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("measure='onnxruntime' needs the onnxruntime package "
                         "(pip install onnxruntime)") from None
    return onnxruntime


class LatencyMeter:
    """Times modules on an input in one runtime ("torch" or "onnxruntime")."""

    def __init__(self, runtime: str = "torch", rounds: int = 9, warmup: int = 2,
                 min_round_s: float = 0.005):
        if runtime not in RUNTIMES:
            raise ValueError(f"measure must be one of {RUNTIMES} or None, got {runtime!r}")
        if runtime == "onnxruntime":
            _onnxruntime()
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
        self.runtime, self.rounds, self.warmup, self.min_round_s = runtime, rounds, warmup, \
            min_round_s

    def seconds(self, modules: list[nn.Module], x: torch.Tensor) -> list[Timing]:
        """Per-call time of each module on ``x``, measured in interleaved rounds (the
        modules' train/eval modes are left as they were)."""
        modes = {m: m.training for module in modules for m in module.modules()}
        try:
            runs = [self._runner(m, x) for m in modules]
            return self._interleaved(runs, x)
        finally:
            for m, training in modes.items():
                m.training = training

    def _interleaved(self, runs, x: torch.Tensor) -> list[Timing]:
        cuda = x.device.type == "cuda"

        def clock(run, calls):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            if cuda:
                torch.cuda.synchronize(x.device)
            return time.perf_counter() - start

        calls = []
        for run in runs:
            for _ in range(self.warmup):
                clock(run, 1)
            once = max(clock(run, 1), 1e-7)
            calls.append(max(1, math.ceil(self.min_round_s / once)))
        times = [[] for _ in runs]
        for _ in range(self.rounds):
            for i, run in enumerate(runs):
                times[i].append(clock(run, calls[i]) / calls[i])
        return [_timing(t) for t in times]

    def _runner(self, module: nn.Module, x: torch.Tensor):
        module = module.eval()
        if self.runtime == "torch":
            def run():
                with torch.inference_mode():
                    module(x)
            return run
        return onnx_runner(module, x)


def onnx_runner(module: nn.Module, x: torch.Tensor):
    """An InferenceSession of ``module`` exported (as plain convs) with the input's shape."""
    ort = _onnxruntime()
    if isinstance(module, LOWRANK_LAYERS):
        module = plain_layers(module).eval()
    else:
        module = to_conv_pairs(copy.deepcopy(module).eval())
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: ~40 ms a layer, where dynamo export takes seconds.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["input"],
                          output_names=["output"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if x.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("measure='onnxruntime' with a CUDA example_input needs "
                             "onnxruntime-gpu (CUDAExecutionProvider)")
        session = ort.InferenceSession(buffer.getvalue(), options,
                                       providers=[("CUDAExecutionProvider",
                                                   {"device_id": x.device.index or 0})])
        binding = session.io_binding()
        x = x.contiguous()
        binding.bind_input("input", "cuda", x.device.index or 0, _numpy_dtype(x.dtype),
                           tuple(x.shape), x.data_ptr())
        binding.bind_output("output", "cuda", x.device.index or 0)
        return lambda: session.run_with_iobinding(binding)
    session = ort.InferenceSession(buffer.getvalue(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"input": x.detach().contiguous().numpy()}
    return lambda: session.run(None, feed)


def _numpy_dtype(dtype):
    import numpy as np
    return {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}[dtype]


def meter(measure) -> LatencyMeter | None:
    """``measure`` as decompose_model takes it: None, a runtime name or a LatencyMeter."""
    if measure is None or isinstance(measure, LatencyMeter):
        return measure
    if not isinstance(measure, str):
        raise TypeError(f"measure must be None, 'torch', 'onnxruntime' or a LatencyMeter, "
                        f"got {type(measure).__name__}")
    return LatencyMeter(measure)


def layer_inputs(model: nn.Module, names, example_input: torch.Tensor) -> dict:
    """The input each module named in ``names`` receives when ``model`` (eval mode, no
    gradients) runs ``example_input``."""
    captured, handles = {}, []
    for name in names:
        def record(module, inputs, name=name):
            captured.setdefault(name, inputs[0].detach())
        handles.append(model.get_submodule(name).register_forward_pre_hook(record))
    run_hooked(model, example_input, handles)
    return captured


@dataclass
class MeasuredChoice:
    factorised: list[str]               # the layers that stay factorised
    layer_times: dict                   # name -> (dense Timing, factorised Timing)
    before: Timing                      # the dense model
    after: Timing                       # the model as returned
    reverted: list[str]                 # measured faster alone, reverted by the model check


def choose_faster(model: nn.Module, dense_model: nn.Module, candidates: dict,
                  example_input: torch.Tensor, meter: LatencyMeter) -> MeasuredChoice:
    """Installs in ``model`` (which holds the dense convs named in ``candidates``, a dict
    name -> (conv, factorised layer)) the factorised layers measured faster than their conv on
    their real input, then compares the whole model with ``dense_model``. If it is slower
    beyond noise, the factorised layers with the smallest measured gain go back to dense (a
    bisection on how many) until it is not: the model returned is never measurably slower
    than the dense one, and with every layer reverted it is the dense model."""
    inputs = layer_inputs(model, list(candidates), example_input)
    layer_times, gains = {}, {}
    for name, (conv, layer) in candidates.items():
        dense, factorised = meter.seconds([conv, layer], inputs[name])
        layer_times[name] = (dense, factorised)
        if factorised.median < dense.median:
            gains[name] = dense.median - factorised.median
    order = sorted(gains, key=gains.get)          # smallest gain first: the first to revert

    def install(kept):
        for name, (conv, layer) in candidates.items():
            model.set_submodule(name, layer if name in kept else conv)

    def compare(reverted):
        install(set(order[reverted:]))
        return meter.seconds([dense_model, model], example_input)

    timings = {0: compare(0)}
    low, high = 0, len(order)                     # all reverted: the dense model itself
    if slower_beyond_noise(timings[0][1], timings[0][0]):
        low = min(1, high)
        while low < high:
            mid = (low + high) // 2
            timings[mid] = compare(mid)
            if slower_beyond_noise(timings[mid][1], timings[mid][0]):
                low = mid + 1
            else:
                high = mid
    if low not in timings:
        timings[low] = compare(low)
    install(set(order[low:]))
    before, after = timings[low]
    return MeasuredChoice(order[low:], layer_times, before, after, order[:low])
