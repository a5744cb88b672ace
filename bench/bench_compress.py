"""Is the compressed model really faster? Whole-model latency of ResNet-18 (batch 1, 224x224)
and CIFAR ResNet-56 (batch 64, 32x32), both schemes, in torch (CPU) and ONNX Runtime.

impl:
  dense        the model as built
  energy0.9    decompose_model(energy=0.9): every decomposable conv factorised by the rank rule
  budget2x/3x  decompose_model(target_speedup=2 / 3): leximin-energy ranks for that FLOP budget
  measured     decompose_model(energy=0.9, measure=<the case's runtime>): a layer stays
               factorised only where it is measured faster, and the model is checked whole

TRP-like spectra: a trained (TRP) conv's singular values decay; random init's do not. Every
decomposable conv's weight is therefore set, in the scheme's matrix view, to U diag(s) V^T with
random orthonormal U, V (Householder reflections of the identity, rows permuted) and
s_i = i^(-1/2) (squared singular values decaying like 1/i), scaled to the init's Frobenius norm.
With it, energy 0.9 keeps about half the rank of a 512-wide layer.

Every benchmark records the model's conv FLOP speed-up (and, for budget and measured, which
layers stayed dense) in extra_info; bench/summarize_compress.py prints the table. CPU only
(ONNX Runtime's CPU provider).

Cost control (a ResNet-56 forward at batch 64 takes about a second on a loaded 2-core CPU,
see bench/results/cpu-2core-compress-*.json, and the measured choice times the whole model
against the dense one at every step of its bisection): each (model, scheme)'s TRP-like base is
built once and copied for every impl, and every impl of a case is built before any is timed;
the measured choice uses measure_meter (TRP_BENCH_MEASURE_ROUNDS rounds, default 4, the fewest
that give a noise estimate; one warm-up call); ResNet-56 is timed in fewer rounds than
ResNet-18. TRP_BENCH_MODELS=resnet18 and TRP_BENCH_SCHEMES=spatial (comma-separated) run a
subset, so each network (and scheme) can run in its own pytest process and write its own
--benchmark-json (pytest-benchmark writes only at the end); bench/summarize_compress.py reads
several JSONs as one table.
TRP_BENCH_QUICK=1: CIFAR ResNet-20 at batch 2, every impl, scheme and runtime, 3 rounds.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import trp_kernels as tk
from trp_kernels.schemes.factorization import matrix_shape, matrix_to_weight
from trp_kernels.compression import decomposable_layers
from trp_kernels.compression.latency import LatencyMeter
from trp_kernels.models import create_model

from conftest import QUICK

# name: (batch, image size, timed rounds)
MODELS = ({"resnet20": (2, 32, 3)} if QUICK
          else {"resnet18": (1, 224, 9), "resnet56": (64, 32, 5)})
if os.environ.get("TRP_BENCH_MODELS"):
    _chosen = os.environ["TRP_BENCH_MODELS"].split(",")
    if not set(_chosen) <= set(MODELS):
        raise ValueError(f"TRP_BENCH_MODELS must name models of {sorted(MODELS)}, got {_chosen}")
    MODELS = {name: MODELS[name] for name in _chosen}
SCHEMES = tuple(os.environ.get("TRP_BENCH_SCHEMES", "channel,spatial").split(","))
if not set(SCHEMES) <= {"channel", "spatial"}:
    raise ValueError(f"TRP_BENCH_SCHEMES must name channel and/or spatial, got {SCHEMES}")
RUNTIMES = ("torch", "onnxruntime")
IMPLS = ("dense", "energy0.9", "budget2x", "budget3x", "measured")


def householder_columns(size, k, generator):
    """The first k columns of a random orthogonal matrix: two Householder reflections of the
    identity, O(size * k) work (a QR of a random matrix takes minutes on a loaded 2-core CPU)."""
    Q = torch.eye(size, k, dtype=torch.float64)
    for _ in range(2):
        v = torch.randn(size, 1, generator=generator, dtype=torch.float64)
        v /= v.norm()
        Q -= 2 * v @ (v.T @ Q)
    return Q[torch.randperm(size, generator=generator)]


def trp_like(model, scheme, generator):
    """Sets every decomposable conv (outside never_decomposed) to a power-law spectrum."""
    with torch.no_grad():
        for _, conv in decomposable_layers(model):
            m, n = matrix_shape(conv.weight.shape, scheme)
            k = min(m, n)
            U, V = householder_columns(m, k, generator), householder_columns(n, k, generator)
            s = torch.arange(1, k + 1, dtype=torch.float64) ** -0.5
            M = (U * s) @ V.T
            M *= conv.weight.norm().double() / M.norm()
            conv.weight.copy_(matrix_to_weight(M.float(), conv.weight.shape, scheme))


MEASURE_ROUNDS = int(os.environ.get("TRP_BENCH_MEASURE_ROUNDS", "4"))


def measure_meter(runtime):
    """The measured choice's meter: 4 rounds (the fewest with a noise estimate) instead of the
    library's 9, one warm-up call, rounds of at least 2 ms."""
    return LatencyMeter(runtime, rounds=MEASURE_ROUNDS, warmup=1, min_round_s=0.002)


_bases: dict = {}
_models: dict = {}


def base_case(name, scheme):
    """(TRP-like dense model, input) of a model and scheme, built once for all impls."""
    if (name, scheme) not in _bases:
        batch, size, _ = MODELS[name]
        g = torch.Generator().manual_seed(0)
        base = create_model(name).eval()
        trp_like(base, scheme, g)
        _bases[name, scheme] = base, torch.randn(batch, 3, size, size, generator=g)
    return _bases[name, scheme]


def built(name, scheme, impl, runtime):
    """(model, input, report) of one case, built once (the measured choice per runtime)."""
    key = (name, scheme, impl, runtime if impl == "measured" else None)
    if key not in _models:
        base, x = base_case(name, scheme)
        model, report = (base, None) if impl == "dense" else (copy.deepcopy(base), None)
        sample = x[:1]
        if impl == "energy0.9":
            report = tk.decompose_model(model, scheme, energy=0.9, skip=None, example_input=sample)
        elif impl.startswith("budget"):
            report = tk.decompose_model(model, scheme, skip=None, example_input=sample,
                                        target_speedup=float(impl[6:-1]))
        elif impl == "measured":
            # measured on the benchmark's own batch: latency is a property of the batch size
            report = tk.decompose_model(model, scheme, energy=0.9, skip=None, example_input=x,
                                        measure=measure_meter(runtime))
        _models[key] = (model.eval(), x, report)
    return _models[key]


def runner(model, x, runtime):
    if runtime == "torch":
        def run():
            with torch.inference_mode():
                model(x)
        return run
    from trp_kernels.compression.latency import onnx_runner
    return onnx_runner(model, x)


@pytest.fixture(autouse=True)
def quick_single_thread():
    """Quick mode is a smoke run (CI, a shared machine): one thread, because two OpenMP threads
    that spin-wait on an oversubscribed CPU make a small torch forward many times slower than
    one thread does. Full runs keep the caller's threads; run them with OMP_WAIT_POLICY=PASSIVE
    on a shared machine (docs/compression.md, Benchmark)."""
    if not QUICK:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


PARAMS = [(f"{name}-{scheme}-b{MODELS[name][0]}-{runtime}", name, scheme, runtime, impl)
          for name in MODELS for scheme in SCHEMES for runtime in RUNTIMES for impl in IMPLS]


@pytest.mark.parametrize("case,name,scheme,runtime,impl", PARAMS,
                         ids=[f"{p[0]}-{p[4]}" for p in PARAMS])
def test_compressed_model(benchmark, case, name, scheme, runtime, impl):
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    # Every impl of the case is built before any is timed, so the case's five benchmarks run
    # back to back, not minutes apart (the measured choice takes that long): on a shared
    # machine whose speed drifts, the ratios to dense then compare like with like.
    for other in IMPLS:
        built(name, scheme, other, runtime)
    model, x, report = built(name, scheme, impl, runtime)
    benchmark.group = case
    benchmark.extra_info.update(
        case=case, impl=impl, model=name, scheme=scheme, runtime=runtime, batch=x.shape[0],
        threads=torch.get_num_threads(), measure_rounds=MEASURE_ROUNDS,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        flops_speedup=1.0 if report is None else report.flops_speedup,
        kept_dense=[] if report is None else [l.name for l in report.layers if l.kept_dense],
        layers=0 if report is None else len(report.layers))
    if report is not None and report.latency_before is not None:
        benchmark.extra_info.update(measured_before=report.latency_before,
                                    measured_after=report.latency_after)
    run = runner(model, x, runtime)
    benchmark.pedantic(run, rounds=MODELS[name][2], iterations=1, warmup_rounds=1)
