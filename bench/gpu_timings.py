"""Headline GPU timings, one JSON line per measurement, flushed as it is taken (a run cut short
keeps what it measured). The first line records the machine (device, driver, torch, CUDA,
cuDNN, clocks; bench/gpu_env.py) and the device's own ceilings, measured first: the copy
bandwidth (bytes read + written) and the bf16 and TF32 matrix-product rates on random data.
Each timing is device time per call (bench/cuda_timing.py): the median over batches of
back-to-back calls between CUDA events, the queue held full by a sleep kernel so that the host's
time to issue the calls stays out of it; the host's time per call is recorded apart
(``host_ms``). Conv cases: 2 batches of 50 calls after 3 warm-up calls, and the same call
captured in a CUDA graph and replayed as often (``replay_ms``). Projections and training steps
synchronise by themselves (eigh's convergence check), so they are timed without the hold: one
batch of 5 (projections) or 20 (steps) calls. Inputs are random and non-zero; torch's default
TF32 settings and cudnn.benchmark on (cuDNN's baselines get their fastest algorithms). Each
conv record carries its FLOPs, fewest bytes and the fraction of the device's roofline it reached; ``auto``'s
records name what it chose (``auto_chose``, forward and backward) and what its own
measurement saw (``auto_measured``: each candidate's median device and host time).

groups (in run order):
  step  one SGD training step of ResNet-20 on CIFAR-sized input, batch 128: plain, and TRP+Nu
        (TRPRegularizer, energy 0.9, lambda 3e-4, period 1) per scheme and TRP_SVD_IMPL
  svd   the TRP projection of every decomposable conv of ResNet-20/18/50 (bench/layer_sets.json,
        energy 0.9, same-shaped layers stacked): trp_jacobi / trp_eigh (lowrank_project_groups
        under TRP_SVD_IMPL=jacobi / eigh), torch_gram (float64 Gram + torch.linalg.eigh written
        in torch) and torch_svd (torch.linalg.svd), both from bench/svd_baselines.py
  conv  trp.lowrank_conv2d forced to fused / two_convs / dense, two_convs_r8 (two_convs with
        the rank padded to a multiple of 8: a fair cuDNN baseline), and auto (the measured
        choice), on the ResNet-18 3x3 layer shapes at TRP-like ranks (bench/conv_cases.py),
        batch 128, bfloat16 and float32, NCHW and channels_last, forward and forward + backward

--quick runs the cases every speed goal is judged on (every step and projection case; the
stride-1 ResNet-18 layers in channels_last); --skip-quick runs the others, so that the two
runs together are the whole table.

Two more groups, only when named (--groups project,pstep; bench/run_gpu.sh phase
timings_project), time warm starts beside cold ones (docs/cuda_svd.md, "Warm start"): 50
back-to-back calls between two events, held and replayed from a CUDA graph as well where the call
never synchronises (the compiled op), the host's time per call apart:
  project  the projection of ResNet-20/18/50 (both schemes) one training step after a
           projection: the cold projection's W_low moved by 2e-3 of its norm (bench/
           layer_sets.json, energy 0.9). impls trp_jacobi-cold / trp_jacobi-warm (the compiled op
           forced, without and with the previous projection's bases), trp_eigh-cold (the
           composite path; trp_eigh_xsyev-cold: with TRP_EIGH_IMPL=cusolver_batched), and the
           baselines torch_gram, gram_xsyev (torch_gram on cusolverDnXsyevBatched) and
           torch_svd (svd_baselines.py)
  pstep    a TRP+Nu training step beside a plain one (batch 128): ResNet-20 on CIFAR-sized
           input in float32, ResNet-18 on ImageNet-sized input under bf16 autocast; per scheme,
           warm_start True and False, each SVD on the default path

    python bench/gpu_timings.py --out timings.jsonl [--groups step,svd,conv] [--quick]
    python bench/gpu_timings.py --out timings.jsonl --groups project
    python bench/gpu_timings.py --list [--quick]        # the measurements, no GPU needed
    python bench/gpu_timings.py --fold timings.jsonl NVIDIA-H200-20261201.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # the repository (no install needed) and bench/

import cuda_timing  # noqa: E402
from gpu_env import device_slug, machine_info, require_cuda  # noqa: E402

GROUPS = ("step", "svd", "conv")  # run order: cheapest headline first
EXTRA_GROUPS = ("project", "pstep")  # only when named: bench/run_gpu.sh's timings_project
SVD_NETWORKS = ("resnet20", "resnet18", "resnet50")
SVD_IMPLS = ("trp_jacobi", "trp_eigh", "torch_gram", "torch_svd")
PROJECT_IMPLS = ("trp_jacobi-cold", "trp_jacobi-warm", "trp_eigh-cold", "trp_eigh_xsyev-cold",
                 "torch_gram", "gram_xsyev", "torch_svd")
PSTEP_CASES = ("resnet20-b128", "resnet18-imagenet-b128-bf16")
PSTEP_IMPLS = ("plain", "trp-cold", "trp-warm")
CONV_IMPLS = ("fused", "two_convs", "two_convs_r8", "dense", "auto")
CONV_FORCED = {"two_convs_r8": "two_convs"}   # the implementation an extra impl runs
CONV_DTYPES = ("bf16", "f32")
STEP_IMPLS = ("plain", "trp_jacobi", "trp_eigh")
SCHEMES = ("channel", "spatial")
DEVICE = "cuda"  # tests/test_gpu_scripts.py runs the measurements' plumbing on the CPU
CLOCK = None     # cuda_timing.CudaClock() when None; the tests put a host clock here
# back-to-back calls a batch and batches a timing: conv cases, and the projections and steps
# (which synchronise by themselves, so no hold; as many calls as the phase's time allows)
CONV_CALLS, CONV_BATCHES = cuda_timing.MIN_CALLS, 2
SVD_CALLS, STEP_CALLS = 5, 20
CONV_BATCH = 128  # images per conv call (the case names say b128; the CPU test runs fewer)


def cases(groups=GROUPS) -> list[dict]:
    """Every measurement as a dict of its parameters, in run order; ``quick`` marks the ones
    the speed goals are judged on."""
    out = []
    if "step" in groups:
        for scheme in SCHEMES:
            for impl in STEP_IMPLS:
                if impl == "plain" and scheme != SCHEMES[0]:
                    continue  # the plain step has no scheme
                case = "resnet20-b128" + ("" if impl == "plain" else f"-{scheme}")
                out.append({"group": "step", "case": case, "impl": impl, "scheme": scheme,
                            "quick": True})
    if "svd" in groups:
        for network in SVD_NETWORKS:
            for scheme in SCHEMES:
                for impl in SVD_IMPLS:
                    out.append({"group": "svd", "case": f"{network}-{scheme}", "impl": impl,
                                "network": network, "scheme": scheme, "quick": True})
    if "conv" in groups:
        from conv_cases import layers

        # forward before forward + backward, bf16 before float32: the headline first
        for backward in (False, True):
            for dtype in CONV_DTYPES:
                for layer in layers("resnet18"):
                    for scheme in SCHEMES:
                        for cl in (True, False):
                            name = (f"{layer.name}-{scheme}-b128-{dtype}-{'cl' if cl else 'nchw'}"
                                    f"-{'fwdbwd' if backward else 'fwd'}")
                            for impl in CONV_IMPLS:
                                out.append({"group": "conv", "case": name, "impl": impl,
                                            "layer": layer, "scheme": scheme, "dtype": dtype,
                                            "channels_last": cl, "backward": backward,
                                            "quick": cl and layer.stride == 1})
    return out


def extra_cases(groups=EXTRA_GROUPS) -> list[dict]:
    """The measurements of the groups run only when named, in run order."""
    out = []
    if "project" in groups:
        for network in SVD_NETWORKS:
            for scheme in SCHEMES:
                for impl in PROJECT_IMPLS:
                    out.append({"group": "project", "case": f"{network}-{scheme}", "impl": impl,
                                "network": network, "scheme": scheme, "quick": False})
    if "pstep" in groups:
        for case in PSTEP_CASES:
            for scheme in SCHEMES:
                for impl in PSTEP_IMPLS:
                    if impl == "plain" and scheme != SCHEMES[0]:
                        continue  # the plain step has no scheme
                    name = case + ("" if impl == "plain" else f"-{scheme}")
                    out.append({"group": "pstep", "case": name, "impl": impl, "scheme": scheme,
                                "model": case, "quick": False})
    return out


def selected(groups=GROUPS, quick=False, skip_quick=False) -> list[dict]:
    """The cases of a run: all, the quick ones, or all but the quick ones."""
    extra = extra_cases([g for g in groups if g in EXTRA_GROUPS])
    return [c for c in cases([g for g in groups if g in GROUPS]) + extra
            if not (quick and not c["quick"]) and not (skip_quick and c["quick"])]


def measure_ceilings(copy_elements: int = 2**28, n: int = 8192) -> dict:
    """The device's own ceilings on random data, after warm-up: a 1 GiB device-to-device copy
    (bytes read + written per second) and 8192^3 matrix products in bf16 and in float32 with
    TF32 allowed (the rate cuDNN's float32 convolutions run at under torch's defaults)."""
    out = {}
    x = torch.randn(copy_elements, device=DEVICE)
    y = torch.empty_like(x)
    copy_ms = time_device(lambda: y.copy_(x), batches=2)["median_ms"]
    out["bytes_per_s"] = 2 * x.numel() * 4 / (copy_ms / 1e3)
    del x, y
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("bfloat16", torch.bfloat16, False), ("float32", torch.float32, True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=DEVICE, dtype=dtype)
            b = torch.randn(n, n, device=DEVICE, dtype=dtype)
            ms = time_device(lambda: a @ b, batches=2)["median_ms"]
            out[f"{name}_flops_per_s"] = 2 * n**3 / (ms / 1e3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return out


def ceilings_of(measured: dict):
    from conv_cases import Ceilings

    bf16 = measured["bfloat16_flops_per_s"]
    return Ceilings({"bfloat16": bf16, "float16": bf16, "float32": measured["float32_flops_per_s"]},
                    measured["bytes_per_s"])


def time_device(fn, **options) -> dict:
    """cuda_timing.time_calls on this script's clock (CLOCK)."""
    return cuda_timing.time_calls(fn, CLOCK, **options)


def one_step_later(low: torch.Tensor, change: float = 2e-3, seed: int = 0) -> torch.Tensor:
    """A batch of projected matrices as the next TRP step sees them: plus a random change of
    ``change`` times each matrix's norm (an SGD step of ResNet-20 under TRP+Nu moves a layer by
    about 2e-3 of its norm)."""
    g = torch.Generator(device=low.device).manual_seed(seed)
    noise = torch.randn(low.shape, device=low.device, dtype=low.dtype, generator=g)
    scale = torch.linalg.matrix_norm(low, keepdim=True) / torch.linalg.matrix_norm(noise, keepdim=True)
    return low + change * scale * noise


def project_fn(case):
    """(fn, TRP_SVD_IMPL, record extras) of a projection case: the inputs one step after a
    projection, and for a warm start that projection's bases."""
    from svd_baselines import ENERGY, gram_xsyev, torch_gram, torch_svd
    from layer_sets import groups, weights
    from trp_kernels.ops.svd import lowrank_project_groups

    first = groups(weights(case["network"], case["scheme"], device=DEVICE))
    with svd_impl_env("jacobi"):
        lows, _, _, bases = lowrank_project_groups(first, energy=ENERGY, check_finite=False,
                                                   return_basis=True)
    stacked = [one_step_later(low, seed=i) for i, low in enumerate(lows)]
    impl, _, start = case["impl"].partition("-")
    extra = {"min_bytes": sum(3 * G.numel() * G.element_size() for G in stacked),
             "gram_flops": sum(G.shape[0] * (2 * min(G.shape[1:]) ** 2 * max(G.shape[1:])
                                             + 4 * G.shape[1] * G.shape[2] * min(G.shape[1:]))
                               for G in stacked), "start": start or "cold"}
    if impl == "trp_eigh_xsyev":   # the composite path on cuSOLVER's batched eigensolver
        impl, extra["eigh_impl"] = "trp_eigh", "cusolver_batched"
    if impl.startswith("trp_"):
        warm = {"basis": bases} if start == "warm" else {}

        def fn():
            return lowrank_project_groups(stacked, energy=ENERGY, check_finite=False, **warm)
        return fn, impl[len("trp_"):], extra
    baseline = {"torch_gram": torch_gram, "gram_xsyev": gram_xsyev, "torch_svd": torch_svd}[impl]
    return (lambda: baseline(stacked)), None, extra


def pstep_fn(case):
    """A training step of the case's model, TRP+Nu (warm or cold starts) or plain."""
    from trp_kernels import TRPRegularizer
    from trp_kernels.models import resnet18, resnet20

    torch.manual_seed(0)
    imagenet = case["model"].startswith("resnet18")
    model = (resnet18() if imagenet else resnet20()).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    size = 224 if imagenet else 32
    x = torch.randn(128, 3, size, size, device=DEVICE)
    y = torch.randint(0, 1000 if imagenet else 10, (128,), device=DEVICE)
    criterion = torch.nn.CrossEntropyLoss()
    trp = None if case["impl"] == "plain" else TRPRegularizer(
        model, scheme=case["scheme"], energy=0.9, nuclear_weight=3e-4, period=1,
        warm_start=case["impl"] == "trp-warm")

    def fn():
        if trp is not None:
            trp.before_forward()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=imagenet):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trp is not None:
            trp.after_backward()
        optimizer.step()
    return fn


class svd_impl_env:
    """TRP_SVD_IMPL set for a block (the ops read it on every call), then restored."""

    def __init__(self, impl: str | None):
        self.impl = impl

    def __enter__(self):
        self.previous = os.environ.get("TRP_SVD_IMPL")
        if self.impl is not None:
            os.environ["TRP_SVD_IMPL"] = self.impl

    def __exit__(self, *exc):
        if self.previous is None:
            os.environ.pop("TRP_SVD_IMPL", None)
        else:
            os.environ["TRP_SVD_IMPL"] = self.previous


def svd_fn(case):
    from svd_baselines import ENERGY, torch_gram, torch_svd
    from layer_sets import groups, weights
    from trp_kernels.ops.svd import lowrank_project_groups

    stacked = groups(weights(case["network"], case["scheme"], device=DEVICE))
    impl = case["impl"]
    extra = {"min_bytes": sum(3 * G.numel() * G.element_size() for G in stacked),  # W in; W_low, subgrad out
             "gram_flops": sum(G.shape[0] * (2 * min(G.shape[1:]) ** 2 * max(G.shape[1:])
                                             + 4 * G.shape[1] * G.shape[2] * min(G.shape[1:]))
                               for G in stacked)}
    if impl.startswith("trp_"):
        def fn():
            return lowrank_project_groups(stacked, energy=ENERGY, check_finite=False)
        return fn, impl[len("trp_"):], extra
    if impl == "torch_gram":
        return (lambda: torch_gram(stacked)), None, extra
    return (lambda: torch_svd(stacked)), None, extra


def conv_fn(case, ceilings):
    import trp_kernels as tk
    from conv_cases import layer_inputs, padded_rank, roofline

    layer, scheme = case["layer"], case["scheme"]
    x, w1, w2, bias, _ = layer_inputs(layer, scheme, CONV_BATCH, case["dtype"],
                                      case["channels_last"], DEVICE)
    if case["impl"] == "two_convs_r8":
        w1, w2 = padded_rank(w1, w2)
    args = (layer.stride, layer.padding, 1, scheme)
    if case["backward"]:
        inputs = [t.detach().requires_grad_() for t in (x, w1, w2, bias)]
        grad_y = torch.randn_like(tk.lowrank_conv2d(x, w1, w2, bias, *args))

        def fn():
            return torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)
    else:
        def fn():
            return tk.lowrank_conv2d(x, w1, w2, bias, *args)
    dtype = {"bf16": "bfloat16", "f32": "float32"}[case["dtype"]]
    extra = {"rank": w1.shape[0], "batch": CONV_BATCH}
    if ceilings is not None:  # None: the ceilings could not be measured
        bound = roofline(layer, scheme, CONV_BATCH, dtype, case["backward"], case["impl"], ceilings)
        extra.update(flops=bound["flops"], min_bytes=bound["min_bytes"], bound=bound["bound"],
                     roofline_ms=1e3 * bound["predicted_s"])
    return fn, extra


def step_fn(case):
    from trp_kernels import TRPRegularizer
    from trp_kernels.models import resnet20

    torch.manual_seed(0)
    model = resnet20().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(128, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (128,), device=DEVICE)
    criterion = torch.nn.CrossEntropyLoss()
    trp = None if case["impl"] == "plain" else TRPRegularizer(
        model, scheme=case["scheme"], energy=0.9, nuclear_weight=3e-4, period=1)

    def fn():
        if trp is not None:
            trp.before_forward()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trp is not None:
            trp.after_backward()
        optimizer.step()
    return fn


def measure(case, ceilings) -> dict:
    record = {k: v for k, v in case.items() if k != "layer"}
    if "layer" in case:
        record["layer"] = case["layer"].name
    svd_impl = None
    if case["group"] == "project":
        fn, svd_impl, extra = project_fn(case)
        record.update(extra)
        # The compiled op on CUDA never synchronises (check_finite=False): held batches and a
        # graph replay. The composite path and the baselines synchronise in eigh: no hold.
        held = svd_impl == "jacobi"
        from trp_kernels.ops import backends

        with svd_impl_env(svd_impl), backends.forced(eigh=extra.get("eigh_impl")):
            record["svd_impl"] = os.environ.get("TRP_SVD_IMPL")
            record.update(time_device(fn, warmup=3, calls=cuda_timing.MIN_CALLS,
                                      batches=2 if held else 1, hold=held, replay=held))
        return record
    if case["group"] == "pstep":
        fn = pstep_fn(case)
        record["svd_impl"] = os.environ.get("TRP_SVD_IMPL")
        # steps whose projection takes the composite path synchronise: all without a hold, so
        # that the plain, warm and cold steps are timed alike
        record.update(time_device(fn, warmup=5, calls=STEP_CALLS, batches=1, hold=False))
        return record
    if case["group"] == "svd":
        fn, svd_impl, extra = svd_fn(case)
        record.update(extra)
        warmup, calls = 2, SVD_CALLS
    elif case["group"] == "conv":
        from trp_kernels.ops import backends

        if case["impl"] == "auto":
            backends.clear_conv_choices()  # auto measures this case's problems itself
        with backends.forced(conv=CONV_FORCED.get(case["impl"], case["impl"])):
            fn, extra = conv_fn(case, ceilings)
            record.update(extra)
            # auto measures on its first call, one of the warm-up calls (as in training)
            record.update(time_device(fn, warmup=3, calls=CONV_CALLS, batches=CONV_BATCHES,
                                      replay=True))
        if case["impl"] == "auto":  # what it chose and what its own measurement saw
            made = backends.conv_choices()
            record["auto_chose"] = {("backward" if c.backward else "forward"): c.impl
                                    for c in made}
            record["auto_measured"] = {("backward" if c.backward else "forward"): c.details
                                       for c in made}
        if "roofline_ms" in record:
            record["roofline_fraction"] = record["roofline_ms"] / record["median_ms"]
        return record
    else:
        svd_impl = None if case["impl"] == "plain" else case["impl"][len("trp_"):]
        with svd_impl_env(svd_impl):
            fn = step_fn(case)
        warmup, calls = 3, STEP_CALLS
    with svd_impl_env(svd_impl):
        record["svd_impl"] = os.environ.get("TRP_SVD_IMPL")
        record.update(time_device(fn, warmup=warmup, calls=calls, batches=1, hold=False))
    return record


def fold(jsonl: str, out: str) -> None:
    """The JSON lines of a run as one JSON document: {"machine": ..., "measurements": [...]}."""
    machine, measurements = None, []
    with open(jsonl) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a kill
                continue
            if record.get("kind") == "machine":
                machine = machine or record  # a later run appending to the file: same machine
            else:
                measurements.append(record)
    with open(out, "w") as f:
        json.dump({"machine": machine, "measurements": measurements}, f, indent=1)
        f.write("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON-lines file to append to (default: stdout only)")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"comma-separated subset of {','.join(GROUPS + EXTRA_GROUPS)}")
    parser.add_argument("--quick", action="store_true",
                        help="only the cases the speed goals are judged on")
    parser.add_argument("--skip-quick", action="store_true",
                        help="every case but the quick ones (the rest of the table)")
    parser.add_argument("--list", action="store_true", help="print the measurements and exit")
    parser.add_argument("--fold", nargs=2, metavar=("JSONL", "JSON"),
                        help="write a run's JSON lines as one JSON document and exit")
    args = parser.parse_args(argv)
    if args.fold:
        fold(*args.fold)
        return 0
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS + EXTRA_GROUPS))
    if unknown:
        parser.error(f"--groups: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(GROUPS + EXTRA_GROUPS)}")
    if args.quick and args.skip_quick:
        parser.error("--quick and --skip-quick exclude each other")
    todo = selected(groups, args.quick, args.skip_quick)
    if args.list:
        for c in todo:
            print(f"{c['group']:<5} {c['case']:<48} {c['impl']}")
        return 0
    require_cuda("gpu_timings.py")
    out = open(args.out, "a") if args.out else None

    def emit(record):
        line = json.dumps(record)
        if out:
            out.write(line + "\n")
            out.flush()
        return line

    torch.backends.cudnn.benchmark = True  # cuDNN's baselines at their fastest algorithms
    from trp_kernels.ops import backends

    backends.set_conv_choice_file(None)  # auto's choices measured here, none read from a file
    info = machine_info()
    try:
        info["ceilings"] = measure_ceilings()
        ceilings = ceilings_of(info["ceilings"])
    except Exception as e:  # the timings are still worth having without their roofline
        info["ceilings"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        ceilings = None
    emit({"kind": "machine", **info, "slug": device_slug(info)})
    print(f"device {info['device']}, driver {info['driver']}, torch {info['torch']}, "
          f"CUDA {info['cuda']}, cuDNN {info['cudnn']}", flush=True)
    failures = done = 0
    start = time.perf_counter()
    # bench/run_gpu.sh's phase limit: stop starting cases a few seconds before it, so that a
    # run cut short still ends cleanly with what it measured
    deadline = float(os.environ.get("TRP_PHASE_DEADLINE", "inf")) - 5
    for case in todo:
        if time.time() > deadline:
            print(f"timings: stopping at the phase's time limit, {len(todo) - done} cases "
                  f"not measured", flush=True)
            break
        done += 1
        try:
            record = measure(case, ceilings)
        except Exception as e:  # one failing impl must not cost the rest of the table
            failures += 1
            record = {k: v for k, v in case.items() if k != "layer"}
            record["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        emit({"kind": "timing", **record})
        shown = (f"{record['median_ms']:9.3f} ms" if "median_ms" in record
                 else f"ERROR {record['error']}")
        print(f"{case['group']:<5} {case['case']:<48} {case['impl']:<10} {shown}", flush=True)
    print(f"timings: {done - failures} measured, {failures} failed, {len(todo) - done} not "
          f"reached of {len(todo)}, {time.perf_counter() - start:.0f} s", flush=True)
    if out:
        out.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
