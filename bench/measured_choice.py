"""Does the measured choice ever make a model slower? Third-party models (pytorchcv, built by
their importable names, with TRP-like spectra: bench/spectra.py), each case a model, scheme,
runtime and FLOP budget:

  dense        the model as built
  unmeasured   decompose_model(target_speedup=t)
  measured     decompose_model(target_speedup=t, measure=<runtime>)

then the three timed against each other by this script's own timer (not the library's), in
interleaved rounds after a warm-up, in that runtime: torch eager under inference_mode, or ONNX
Runtime on the ONNX files ``export_onnx`` writes (what a user ships), with as many threads as
torch. The dense model is timed twice (``dense_again``: the same model, a second runner), so
that the table shows how far two timings of one model differ on that machine. Both the best
and the median round are recorded; the goal is that the measured model's best round is never
slower than the faster of dense and unmeasured by more than two timings of one model differ:
5%, or the case's dense-again difference where that is larger.

pytorchcv is a benchmark dependency only: ``pip install pytorchcv --no-deps`` (it imports
without torchvision for these models). Usage:

    OMP_WAIT_POLICY=PASSIVE python bench/measured_choice.py --threads 2 --out RESULT.json \\
        [--cases A,B] [--rounds 20] [--label LABEL]
    python bench/measured_choice.py --table RESULT.json [RESULT.json ...]

OMP_WAIT_POLICY=PASSIVE: on a CPU shared with other jobs, torch's spin-waiting OpenMP threads
make a forward pass take anything from one to thirty times its cost (docs/compression.md,
"Measured choice"), and no timer, this one included, can then rank models; ONNX Runtime's
sessions here, as the library's meter's, do not spin.

Only the public API of decompose_model is used, so the same script times older versions of
the library (``PYTHONPATH`` naming their checkout) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import sys
import tempfile
import time

import torch

import trp_kernels as tk
from result_script import measure_or_table
from spectra import trp_like

# name: (callable, input shape, batch)
MODELS = {
    "resnet18": ("pytorchcv.models.resnet:resnet18", (3, 224, 224), 1),
    "resnet56": ("pytorchcv.models.resnet_cifar:resnet56_cifar10", (3, 32, 32), 16),
    "squeezenet1.1": ("pytorchcv.models.squeezenet:squeezenet_v1_1", (3, 224, 224), 1),
}
CASES = [f"{model}-{scheme}-{runtime}-{target}x"
         for model in MODELS for scheme in ("channel", "spatial")
         for runtime in ("torch", "onnxruntime") for target in (2,)] + \
    ["resnet18-channel-torch-3x", "resnet18-channel-onnxruntime-3x"]
IMPLS = ("dense", "unmeasured", "measured", "dense_again")
TOLERANCE = 0.05


def build(reference: str) -> torch.nn.Module:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)().eval()


def first_conv(model) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


def runner(model, x, runtime, directory, name):
    if runtime == "torch":
        def run():
            with torch.inference_mode():
                model(x)
        return run
    import onnxruntime as ort
    path = os.path.join(directory, f"{name}.onnx")
    tk.export_onnx(model, x[:1], path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")   # as the meter
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def interleaved(runs, rounds: int, warmup: int = 2, min_round_s: float = 0.02):
    """Per run: every round's seconds per call; the runs take turns in every round."""
    calls = []
    for run in runs:
        for _ in range(warmup):
            run()
        start = time.perf_counter()
        run()
        calls.append(max(1, math.ceil(min_round_s / max(time.perf_counter() - start, 1e-7))))
    times = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            for _ in range(calls[i]):
                run()
            times[i].append((time.perf_counter() - start) / calls[i])
    return times


def run_case(case: str, rounds: int) -> dict:
    name, scheme, runtime, target = case.rsplit("-", 3)
    target = float(target[:-1])
    reference, shape, batch = MODELS[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    dense = build(reference)
    skip = [first_conv(dense)]              # the same layers in every library version
    trp_like(dense, scheme, generator, skip)
    example = torch.randn(batch, *shape, generator=generator)
    unmeasured, measured = copy.deepcopy(dense), copy.deepcopy(dense)
    started = time.perf_counter()
    plain = tk.decompose_model(unmeasured, scheme, skip=skip, example_input=example[:1],
                               target_speedup=target)
    unmeasured_s = time.perf_counter() - started
    started = time.perf_counter()
    chosen = tk.decompose_model(measured, scheme, skip=skip, example_input=example,
                                target_speedup=target, measure=runtime)
    measured_s = time.perf_counter() - started
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        models = {"dense": dense, "unmeasured": unmeasured, "measured": measured,
                  "dense_again": dense}
        runs = [runner(m, example, runtime, directory, impl) for impl, m in models.items()]
        times = interleaved(runs, rounds)
    result = {
        "case": case, "model": name, "reference": reference, "scheme": scheme,
        "runtime": runtime, "target_speedup": target, "batch": batch, "rounds": rounds,
        "flops_speedup": {"unmeasured": plain.flops_speedup, "measured": chosen.flops_speedup},
        "kept_dense": {"unmeasured": sum(l.kept_dense for l in plain.layers),
                       "measured": sum(l.kept_dense for l in chosen.layers)},
        "layers": len(chosen.layers),
        "plan": getattr(chosen, "plan", None),
        "choice_latency_ms": {"dense": 1e3 * chosen.latency_before,
                              "measured": 1e3 * chosen.latency_after},
        "decompose_s": {"unmeasured": unmeasured_s, "measured": measured_s},
        "best_ms": {impl: 1e3 * min(t) for impl, t in zip(IMPLS, times)},
        "median_ms": {impl: 1e3 * sorted(t)[len(t) // 2] for impl, t in zip(IMPLS, times)},
        "times_ms": {impl: [1e3 * v for v in t] for impl, t in zip(IMPLS, times)},
        "load_1min": [load_before, os.getloadavg()[0]],
    }
    print(f"{case}: best dense {result['best_ms']['dense']:.1f}, unmeasured "
          f"{result['best_ms']['unmeasured']:.1f}, measured {result['best_ms']['measured']:.1f} "
          f"ms (plan {result['plan']}); load {load_before:.1f}", file=sys.stderr, flush=True)
    return result


def measure(args) -> None:
    cases = args.cases.split(",") if args.cases else CASES
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {CASES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"label": args.label, "trp_kernels": tk.__version__,
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": []}
    for case in cases:
        results["cases"].append(run_case(case, args.rounds))
        with open(args.out, "w") as f:          # every finished case is kept
            json.dump(results, f, indent=1)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


def table(paths) -> None:
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        loads = [c["load_1min"] for c in data["cases"]]
        print(f"\n{data['label']} ({os.path.basename(path)}): torch {data['torch']}, "
              f"{data['threads']} threads, OMP_WAIT_POLICY={data['omp_wait_policy']}, "
              f"1-minute load {min(min(l) for l in loads):.1f} to {max(max(l) for l in loads):.1f}"
              f" on {data['cpus']} cores\n")
        print("| case | dense ms | unmeasured ms (FLOP x) | measured ms (FLOP x, dense layers) "
              "| measured / faster of the two | plan | dense timed again / dense |")
        print("|---|---|---|---|---|---|---|")
        met = 0
        for c in data["cases"]:
            best, median = c["best_ms"], c["median_ms"]
            ratio = best["measured"] / min(best["dense"], best["unmeasured"])
            again = best["dense_again"] / best["dense"]
            met += ratio <= max(1 + TOLERANCE, again, 1 / again)
            print(f"| {c['case']} | {best['dense']:.1f} ({median['dense']:.0f}) "
                  f"| {best['unmeasured']:.1f} ({median['unmeasured']:.0f}), "
                  f"{c['flops_speedup']['unmeasured']:.2f}x "
                  f"| {best['measured']:.1f} ({median['measured']:.0f}), "
                  f"{c['flops_speedup']['measured']:.2f}x, {c['kept_dense']['measured']}/"
                  f"{c['layers']} | {ratio:.2f} | {c['plan'] or '-'} "
                  f"| {best['dense_again'] / best['dense']:.2f} |")
        print(f"\nmeasured no slower than the faster of dense and unmeasured (best round, within "
              f"{100 * TOLERANCE:.0f}% or the dense-again difference): {met} of "
              f"{len(data['cases'])} cases")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--label", default="trp_kernels")
    parser.add_argument("--table", nargs="+", help="print the table of these result files")
    measure_or_table(parser, measure, table)


if __name__ == "__main__":
    main()
