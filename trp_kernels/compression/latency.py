"""Measured latency: the library's one timer (``LatencyMeter``, which the trainer's reports use
too) and the measured choice of ``decompose_model(measure=...)``: whether a factorised layer is
really faster, in the runtime that will run it (``choose_faster``; docs/compression.md).

``LatencyMeter("torch")`` times modules as PyTorch runs them (eval mode, inference mode, CUDA
synchronised around every round); ``LatencyMeter("onnxruntime")`` exports each module (low-rank
layers as plain conv pairs) to ONNX in memory and times an InferenceSession with
torch.get_num_threads() threads whose workers do not spin-wait, on the CPU or, for a CUDA
input, the CUDA provider.
Modules compared with each other are timed in interleaved rounds after a warm-up, so drift of
the machine's speed hits both alike; each round runs a module enough times to last at least
``min_round_s``; a meter with ``max_rounds`` above ``rounds`` (the measured choice's) adds
rounds until every module's spread is under 5% (``STEADY_SPREAD``) or it has run
``max_rounds``, and its Timings say whether they got there. What a module costs is its best
round (``Timing.best``): other processes on
the CPU only ever add time, and with two or more threads they add a lot, at random: torch's
OpenMP threads spin-wait at every parallel op's barrier, so a forward pass waits whenever one
of its threads is descheduled (bench/contention.py: on this project's shared 2-core machine a
pytorchcv ResNet-18 forward took 39 ms in its best call and 614 ms in the median one). The
median measures the load of the moment, the best round the model (docs/compression.md,
"Measured choice"). torch's OpenMP policy is fixed when the process starts, so only ONNX
Runtime's sessions can be told not to spin here.

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
from tqdm.auto import tqdm

from ..schemes.costs import run_hooked
from ..schemes.layer_kinds import LOWRANK_LAYERS, plain_layers
from .export import to_conv_pairs
from .onnx_extra import require

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    best: float            # seconds per call in the fastest round: what the module costs
    median: float          # seconds per call in the median round: the module and the load
    rounds: int = 0        # how many rounds were timed

    @property
    def spread(self) -> float:
        """median / best: 1 on a quiet machine; far above it under CPU contention."""
        return self.median / self.best if self.best > 0 else 1.0

    @property
    def steady(self) -> bool:
        return self.spread <= STEADY_SPREAD


def _timing(times: list[float]) -> Timing:
    return Timing(min(times), statistics.median(times), len(times))


# A timing is steady when its median round is within 5% of its best: the best round then
# stands for the module, and two modules 5% apart are told apart.
STEADY_SPREAD = 1.05
# The spread above which the timings are called contended: the median round measures the load.
CONTENTION_SPREAD = 2.0
# Interleaved rounds a meter times by default.
ROUNDS = 9
# The measured choice adds rounds, up to this many times its meter's rounds, until steady.
MEASURED_ROUND_FACTOR = 3


def timing_warning(spread: float, rounds: int | None = None) -> str | None:
    """What a largest spread ``spread`` over a report's timings means, as one sentence, or
    None when they are steady (``STEADY_SPREAD``). ``rounds``: how many rounds were run."""
    if spread <= STEADY_SPREAD:
        return None
    tried = "" if rounds is None else f" after {rounds} rounds"
    if spread > CONTENTION_SPREAD:
        return (f"the timings varied up to {spread:.1f}x between rounds{tried}: other processes "
                f"competed for the CPU and its threads spin-wait at every barrier, so the "
                f"latencies are best rounds whose ratios carry that uncertainty; time on a quiet "
                f"CPU, with OMP_WAIT_POLICY=PASSIVE or with fewer threads for steadier figures")
    return (f"the timings were not steady: the median round was up to "
            f"{100 * (spread - 1):.0f}% slower than the best{tried} (steady: under "
            f"{100 * (STEADY_SPREAD - 1):.0f}%), so their ratios carry about that uncertainty")


def _onnxruntime():
    require("onnxruntime", purpose="measure='onnxruntime'")
    import onnxruntime
    return onnxruntime


class LatencyMeter:
    """Times modules on an input in one runtime ("torch" or "onnxruntime")."""

    def __init__(self, runtime: str = "torch", rounds: int = ROUNDS, warmup: int = 2,
                 min_round_s: float = 0.005, max_rounds: int | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"measure must be one of {RUNTIMES} or None, got {runtime!r}")
        if runtime == "onnxruntime":
            _onnxruntime()
        for name, value in (("rounds", rounds), ("max_rounds", max_rounds)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.runtime, self.rounds, self.warmup, self.min_round_s = runtime, rounds, warmup, \
            min_round_s
        self.max_rounds = rounds if max_rounds is None else max(rounds, max_rounds)

    def seconds(self, modules: list[nn.Module], x: torch.Tensor) -> list[Timing]:
        """Per-call time of each module on ``x``, measured in interleaved rounds (the
        modules' train/eval modes are left as they were)."""
        modes = {m: m.training for module in modules for m in module.modules()}
        try:
            runs = [self._runner(m, x) for m in modules]
            return self.time_runs(runs, x)
        finally:
            for m, training in modes.items():
                m.training = training

    def time_runs(self, runs, x: torch.Tensor) -> list[Timing]:
        """Per-call time of each of ``runs`` (calls without arguments, e.g. ``onnx_runner``s)
        in interleaved rounds; ``x``: the input they run on, whose device says whether to
        synchronise CUDA."""
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
        while True:
            for _ in range(min(self.rounds, self.max_rounds - len(times[0]))):
                for i, run in enumerate(runs):
                    times[i].append(clock(run, calls[i]) / calls[i])
            timings = [_timing(t) for t in times]
            if len(times[0]) >= self.max_rounds or all(t.steady for t in timings):
                return timings

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
    return onnx_file_runner(buffer.getvalue(), x)


def onnx_file_runner(model, x: torch.Tensor):
    """A call that runs the ONNX model ``model`` (a file's path, or its bytes) on ``x`` in an
    InferenceSession with torch.get_num_threads() threads, on the CPU or, for a CUDA ``x``,
    the CUDA provider; the model's input is its first."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Spinning threads turn CPU contention into waits at every op (module docstring): timed
    # without it, the session measures the model rather than the scheduler.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if x.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("measure='onnxruntime' with a CUDA example_input needs "
                             "onnxruntime-gpu (CUDAExecutionProvider)")
        session = ort.InferenceSession(model, options,
                                       providers=[("CUDAExecutionProvider",
                                                   {"device_id": x.device.index or 0})])
        binding = session.io_binding()
        x = x.contiguous()
        binding.bind_input(session.get_inputs()[0].name, "cuda", x.device.index or 0,
                           _numpy_dtype(x.dtype), tuple(x.shape), x.data_ptr())
        binding.bind_output(session.get_outputs()[0].name, "cuda", x.device.index or 0)
        return lambda: session.run_with_iobinding(binding)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().contiguous().numpy()}
    return lambda: session.run(None, feed)


def _numpy_dtype(dtype):
    import numpy as np
    return {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}[dtype]


def meter(measure) -> LatencyMeter | None:
    """``measure`` as decompose_model takes it: None, a runtime name (a meter that repeats
    rounds until steady, up to ``MEASURED_ROUND_FACTOR`` times its rounds) or a
    LatencyMeter."""
    if measure is None or isinstance(measure, LatencyMeter):
        return measure
    if not isinstance(measure, str):
        raise TypeError(f"measure must be None, 'torch', 'onnxruntime' or a LatencyMeter, "
                        f"got {type(measure).__name__}")
    return LatencyMeter(measure, max_rounds=MEASURED_ROUND_FACTOR * ROUNDS)


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
    plan: str                           # the plan kept: "measured", "unmeasured" or "dense"
    plans: dict                         # plan -> Timing of the whole model, one comparison
    before: Timing                      # the dense model
    after: Timing                       # the model as returned

    @property
    def timings(self) -> list[Timing]:
        return [t for pair in self.layer_times.values() for t in pair] + list(self.plans.values())

    @property
    def spread(self) -> float:
        """The largest spread of the timings the choice was made on."""
        return max(t.spread for t in self.timings)

    @property
    def steady(self) -> bool:
        """Whether every timing of the choice got under 5% spread (``STEADY_SPREAD``)."""
        return all(t.steady for t in self.timings)


def choose_faster(model: nn.Module, dense_model: nn.Module, candidates: dict,
                  example_input: torch.Tensor, meter: LatencyMeter,
                  progress: bool | None = None) -> MeasuredChoice:
    """Installs in ``model`` (which holds the dense convs named in ``candidates``, a dict
    name -> (conv, factorised layer)) the fastest of three plans: the measured one (the
    factorised layers whose best round on their real input beats their conv's), the
    unmeasured one (every candidate factorised) and the dense model, timed whole against each
    other in interleaved rounds. Layers timed alone do not add up to a model (caches, threads,
    the ops around them), so the whole models decide: the model returned is never slower in
    that comparison than the dense one or than the plan without measuring. Warns when the
    timings show CPU contention (module docstring). ``progress``: a bar advancing at every
    comparison (None: when stderr is a terminal)."""
    inputs = layer_inputs(model, list(candidates), example_input)
    bar = tqdm(total=len(candidates) + 1, desc=f"measuring in {meter.runtime}",
               unit=" comparisons", leave=False,
               disable=None if progress is None else not progress)
    layer_times = {}
    for name, (conv, layer) in candidates.items():
        layer_times[name] = tuple(meter.seconds([conv, layer], inputs[name]))
        bar.update(1)
    plans = {"dense": set(),                       # first: it wins ties
             "measured": {n for n, (dense, fact) in layer_times.items() if fact.best < dense.best},
             "unmeasured": set(candidates)}
    distinct = {}                                  # the same layers are one plan, timed once
    for plan, kept in plans.items():
        distinct.setdefault(frozenset(kept), plan)
    models = []
    for kept in distinct:
        whole = copy.deepcopy(dense_model) if kept else dense_model
        for name in kept:
            whole.set_submodule(name, candidates[name][1])
        models.append(whole)
    timings = dict(zip(distinct.values(), meter.seconds(models, example_input)))
    bar.close()
    chosen = min(timings, key=lambda plan: timings[plan].best)
    for name, (conv, layer) in candidates.items():
        model.set_submodule(name, layer if name in plans[chosen] else conv)
    spread = max(t.spread for t in timings.values())
    if spread > CONTENTION_SPREAD:
        warnings.warn(f"measured choice, whole models: {timing_warning(spread)}",
                      stacklevel=3)
    factorised = [name for name in candidates if name in plans[chosen]]
    return MeasuredChoice(factorised, layer_times, chosen,
                          {plan: timings[distinct[frozenset(kept)]]
                           for plan, kept in plans.items()},
                          timings[distinct[frozenset()]], timings[chosen])
