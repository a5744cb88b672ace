"""Every CUDA path of the library once, against a float64 CPU reference: one line per case,

    OK  | BAD | ERR   <case>   max_err <e> (<the errors that make it up>)  <notes>

SVD (truncated_svd and lowrank_project, under TRP_SVD_IMPL=jacobi and =eigh): the fused kernel
(k <= 64: wide, tall with odd k, k = 64), the blocked Jacobi with 32-wide pair tiles
(64 < k <= 512, padded and not) and 64-wide ones (k > 512), float32 and float64; every batch
also holds a zero matrix (rank 0, zero factors), a rank-2 matrix (kept zero singular values
completed to orthonormal factors) and a matrix holding a NaN (rank -1, NaN outputs); and the
groups op. Conv: fused / two_convs / dense x float32 / float16 / bfloat16 x NCHW /
channels_last x channel / spatial, forward and backward, plus the measured (auto) choice and
rank 0. Tolerances are the tests' (tests/testing.py, tests/test_conv.py).

The SVD and conv cases run in separate processes, so a sticky CUDA error in one family cannot
hide the other; a case that leaves the CUDA context broken (or kills its process) is reported
ERR and the cases after it continue in a fresh process. Exit status: 0 when every case is OK,
1 otherwise, 2 without a CUDA device.

    python bench/gpu_smoke.py            # all cases
    python bench/gpu_smoke.py --list     # their names (no GPU needed)
    python bench/gpu_smoke.py --only conv/fused
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# the repository (trp_kernels without an install), bench/ and tests/ (testing.py's tolerances)
sys.path[:0] = [os.path.dirname(HERE), HERE, os.path.join(os.path.dirname(HERE), "tests")]

from gpu_env import require_cuda  # noqa: E402

SVD_IMPLS = ("jacobi", "eigh")  # TRP_SVD_IMPL: the compiled kernels; float64 Gram + torch eigh
SVD_PATHS = {  # csrc/cuda/svd_launch.cpp, by k = min(m, n)
    "fused": [(16, 144), (33, 17), (64, 576)],
    "blocked32": [(130, 90), (70, 100)],
    "blocked64": [(520, 600)],
}
SVD_RULES = ({}, {"energy": 0.9})
CONV_IMPLS = ("fused", "two_convs", "dense")
CONV_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CONV_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}  # as tests/test_conv.py
CONV_GEOMETRY = ((2, 1), (1, 1), (1, 2))  # stride, padding, dilation: both halos, uneven steps
STICKY_EXIT = 3  # a child's status when its CUDA context no longer works


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "svd" or "conv": one process each
    params: tuple


def all_cases() -> list[Case]:
    cases = []
    for impl in SVD_IMPLS:
        for path, shapes in SVD_PATHS.items():
            for m, n in shapes:
                for dtype in ("float32", "float64"):
                    cases.append(Case(f"svd/{impl}/{path}/{m}x{n}/{dtype}", "svd",
                                      ("matrices", impl, (m, n), dtype)))
        for dtype in ("float32", "float64"):
            cases.append(Case(f"svd/{impl}/groups/{dtype}", "svd", ("groups", impl, None, dtype)))
    for impl in CONV_IMPLS:
        for dtype in CONV_DTYPES:
            for layout in ("nchw", "cl"):
                for scheme in ("channel", "spatial"):
                    cases.append(Case(f"conv/{impl}/{dtype}/{layout}/{scheme}", "conv",
                                      (impl, dtype, layout, scheme, 20)))
    for scheme in ("channel", "spatial"):
        cases.append(Case(f"conv/auto/bfloat16/cl/{scheme}", "conv",
                          ("auto", "bfloat16", "cl", scheme, 20)))
    for impl in CONV_IMPLS:
        cases.append(Case(f"conv/{impl}/float32/nchw/channel/rank0", "conv",
                          (impl, "float32", "nchw", "channel", 0)))
    return cases


# -- SVD --------------------------------------------------------------------------------------

def svd_batch(shape, dtype, generator):
    """3 random matrices, then a zero one, a rank-2 one and one holding a NaN."""
    m, n = shape
    W = torch.randn(6, m, n, generator=generator, dtype=torch.float64)
    W[3] = 0
    W[4] = torch.randn(m, 2, generator=generator, dtype=torch.float64) @ torch.randn(
        2, n, generator=generator, dtype=torch.float64)
    W[5, m // 2, n // 3] = float("nan")
    return W.to(dtype)


def svd_errors(W, out, low, rule, dtype):
    """Errors of the finite matrices against float64 LAPACK, and the contract's yes/no checks."""
    from testing import svd_tol
    from trp_kernels.ops.svd import reference_truncated_svd

    tol = svd_tol[dtype]
    U, S, V, rank = (t.cpu() for t in out)
    finite = W[:5].double()
    ref = reference_truncated_svd(finite, **rule)
    ref_low = (ref.U * ref.S.unsqueeze(-2)) @ ref.V.mT
    s1 = ref.S[:, :1].clamp_min(1e-300)
    norm = torch.linalg.norm(finite, dim=(-2, -1)).clamp_min(1e-300)
    nonzero = [0, 1, 2, 4]
    errors = {
        "sigma": float(((S[nonzero].double() - ref.S[nonzero]).abs() / s1[nonzero]).max()),
        "low": float((torch.linalg.norm(low[nonzero].cpu().double() - ref_low[nonzero],
                                        dim=(-2, -1)) / norm[nonzero]).max()),
    }
    k = S.shape[-1]
    ortho = 0.0
    for b in nonzero:
        r = int(rank[b])
        big = int((S[b, :r].double() >= 1e-2 * float(ref.S[b, 0])).sum())
        for Q in (U[b, :, :big].double(), V[b, :, :big].double()):
            ortho = max(ortho, float((Q.mT @ Q - torch.eye(big, dtype=torch.float64)).abs().max())
                        if big else 0.0)
    if not rule and k:  # the rank-2 matrix keeps k columns: its zero values' vectors completed
        for Q in (U[4].double(), V[4].double()):
            ortho = max(ortho, float((Q.mT @ Q - torch.eye(k, dtype=torch.float64)).abs().max()))
    errors["ortho"] = ortho
    limits = {"sigma": tol["sigma"], "low": tol["recon"], "ortho": tol["ortho"]}
    failed = [f"{name} {errors[name]:.1e} > {limits[name]:.0e}" for name in errors
              if not errors[name] <= limits[name]]
    if not torch.equal(rank[:5], ref.rank):
        failed.append(f"ranks {rank[:5].tolist()} != reference {ref.rank.tolist()}")
    if int(rank[3]) != 0 or U[3].any() or S[3].any() or V[3].any() or low[3].any():
        failed.append("zero matrix: rank or factors not 0")
    if int(rank[5]) != -1 or not (S[5].isnan().all() and low[5].isnan().all()):
        failed.append(f"NaN matrix: rank {int(rank[5])}, outputs not all NaN")
    if not rule and k and int(rank[4]) != k:
        failed.append("rank-2 matrix without criteria: not every column kept")
    return errors, limits, failed


def run_svd_matrices(impl, shape, dtype_name):
    import trp_kernels as tk

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    W = svd_batch(shape, dtype, g)
    worst, failed = {}, []
    for rule in SVD_RULES:
        out = tk.truncated_svd(W.cuda(), **rule, check_finite=False)
        low, sub, rank_p = tk.lowrank_project(W.cuda(), **rule, check_finite=False)
        torch.cuda.synchronize()
        if not torch.equal(rank_p.cpu(), out.rank.cpu()):
            failed.append(f"{rule}: lowrank_project and truncated_svd ranks differ")
        if not torch.isfinite(sub[:5].cpu()).all():
            failed.append(f"{rule}: non-finite sub-gradient of a finite matrix")
        errors, limits, bad = svd_errors(W, out, low, rule, dtype)
        failed += [f"{rule}: {b}" for b in bad]
        for key, value in errors.items():
            worst[key] = max(worst.get(key, 0.0), value)
    return worst, limits, failed


def run_svd_groups(impl, dtype_name):
    from testing import svd_tol
    from trp_kernels.ops.svd import lowrank_project_groups, reference_lowrank_project

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(1)
    groups = [torch.randn(6, 16, 144, generator=g), torch.randn(5, 96, 96, generator=g),
              torch.randn(2, 130, 90, generator=g)]
    groups = [G.to(dtype) for G in groups]
    lows, subs, ranks = lowrank_project_groups([G.cuda() for G in groups], energy=0.9)
    low_err, failed = 0.0, []
    for i, (G, low, rank) in enumerate(zip(groups, lows, ranks)):
        ref = reference_lowrank_project(G.double(), energy=0.9)
        norm = torch.linalg.norm(G.double(), dim=(-2, -1))
        err = torch.linalg.norm(low.cpu().double() - ref.W_low, dim=(-2, -1)) / norm
        low_err = max(low_err, float(err.max()))
        if not torch.equal(rank.cpu(), ref.rank):
            failed.append(f"group {i}: ranks {rank.tolist()} != reference {ref.rank.tolist()}")
    limit = svd_tol[dtype]["recon"]
    if not low_err <= limit:
        failed.append(f"low {low_err:.1e} > {limit:.0e}")
    return {"low": low_err}, {"low": limit}, failed


def run_svd(case: Case):
    kind, impl, shape, dtype = case.params
    previous = os.environ.get("TRP_SVD_IMPL")
    os.environ["TRP_SVD_IMPL"] = impl  # read by the ops on every call
    try:
        if kind == "groups":
            return run_svd_groups(impl, dtype)
        return run_svd_matrices(impl, shape, dtype)
    finally:
        if previous is None:
            del os.environ["TRP_SVD_IMPL"]
        else:
            os.environ["TRP_SVD_IMPL"] = previous


# -- conv -------------------------------------------------------------------------------------



def relative_error(got, want):
    got = got.detach().double().cpu()
    return float((got - want.detach()).norm() / want.detach().norm().clamp_min(1e-300))


def run_conv(case: Case):
    import trp_kernels as tk
    from trp_kernels.schemes import factorization
    from trp_kernels.ops import backends, memory_format_of
    from trp_kernels.ops.conv import reference_lowrank_conv2d

    impl, dtype_name, layout, scheme, rank = case.params
    dtype = CONV_DTYPES[dtype_name]
    C, N = 24, 40
    g = torch.Generator(device="cuda").manual_seed(0)
    shape1, shape2 = factorization.factor_shapes((N, C, 3, 3), rank, scheme)
    x = torch.randn(2, C, 9, 11, device="cuda", generator=g).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = [x, (torch.randn(shape1, device="cuda", generator=g) * 0.3).to(dtype),
              (torch.randn(shape2, device="cuda", generator=g) * 0.3).to(dtype),
              torch.randn(N, device="cuda", generator=g).to(dtype)]
    inputs = [t.requires_grad_() for t in inputs]
    args = (*CONV_GEOMETRY, scheme)
    with backends.forced(conv=impl):
        y, launches = backends.fused_launches(lambda: tk.lowrank_conv2d(*inputs, *args))
        grad_y = torch.randn(y.shape, device="cuda", generator=g).to(dtype)
        grads = torch.autograd.grad(y, inputs, grad_y)
    torch.cuda.synchronize()
    cpu = [t.detach().double().cpu().requires_grad_() for t in inputs]
    ref = reference_lowrank_conv2d(*cpu, *args)
    # at rank 0 the reference's output is the bias alone: x and the factors get zero gradients
    ref_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(
        cpu, torch.autograd.grad(ref, cpu, grad_y.double().cpu(), allow_unused=True))]
    errors = {"fwd": relative_error(y, ref)}
    for name, got, want in zip(("dx", "dw1", "dw2", "db"), grads, ref_grads):
        errors[name] = relative_error(got, want)
    limit = CONV_TOL[dtype_name]
    limits = dict.fromkeys(errors, limit)
    failed = [f"{k} {v:.1e} > {limit:.0e}" for k, v in errors.items() if not v <= limit]
    if not y.is_contiguous(memory_format=memory_format_of(x)):
        failed.append("output layout differs from the input's")
    if rank == 0 and not torch.equal(y, inputs[3].detach().view(1, -1, 1, 1).expand_as(y)):
        failed.append("rank 0: output is not the bias")
    if impl == "fused" and rank > 0 and launches != 1:
        failed.append(f"forced fused launched the fused kernel {launches} times, not once")
    return errors, limits, failed, f"fused launches {launches}"


# -- running ----------------------------------------------------------------------------------

def context_works() -> bool:
    try:
        torch.cuda.synchronize()
        return float(torch.ones(1, device="cuda").add(1).item()) == 2.0
    except Exception:  # a sticky CUDA error fails every later call
        return False


def run_case(case: Case) -> str:
    """The case's verdict line."""
    start = time.perf_counter()
    try:
        result = run_svd(case) if case.family == "svd" else run_conv(case)
    except Exception as e:  # report, keep going
        first = f"{type(e).__name__}: {e}".strip().splitlines()[0][:200]
        return f"ERR {case.name:<44} {first}"
    errors, limits, failed, *notes = result
    worst = max(errors.values()) if errors else 0.0
    detail = " ".join(f"{k} {v:.1e}" for k, v in errors.items())
    verdict = "BAD" if failed else "OK "
    seconds = time.perf_counter() - start
    tail = "; ".join(failed + list(notes))
    return f"{verdict} {case.name:<44} max_err {worst:.1e} ({detail}) {seconds:.1f}s {tail}".rstrip()


def child(names: list[str]) -> int:
    """Runs the named cases in this process, printing START and the verdict of each; exits
    STICKY_EXIT as soon as the CUDA context stops working."""
    torch.backends.cudnn.allow_tf32 = False  # the float32 tolerance (1e-4) is for full float32
    torch.backends.cuda.matmul.allow_tf32 = False
    by_name = {c.name: c for c in all_cases()}
    for name in names:
        print(f"START {name}", flush=True)
        line = run_case(by_name[name])
        if not context_works():
            print(f"ERR {line[4:]}; the CUDA context is broken after this case", flush=True)
            return STICKY_EXIT
        print(line, flush=True)
    return 0


def drive(cases: list[Case]) -> dict:
    """Runs every family in its own child process, restarting after a case that broke it."""
    counts = {"OK": 0, "BAD": 0, "ERR": 0}
    for family in ("svd", "conv"):
        todo = [c.name for c in cases if c.family == family]
        while todo:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", *todo]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            started, finished = None, set()
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("START "):
                    started = line[6:]
                    continue
                verdict = line.split(" ", 1)[0]
                if verdict in counts and started is not None and started not in finished:
                    counts[verdict] += 1
                    finished.add(started)
                print(line, flush=True)
            rc = proc.wait()
            if rc == 0:
                break
            if started is not None and started not in finished:
                print(f"ERR {started:<44} its process died (exit status {rc})", flush=True)
                counts["ERR"] += 1
                finished.add(started)
            if started is None:  # died before the first case: nothing to retry with
                for name in todo:
                    print(f"ERR {name:<44} not run: the process died at start ({rc})")
                counts["ERR"] += len(todo)
                break
            todo = todo[todo.index(started) + 1:]
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if args.only in c.name]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    require_cuda("gpu_smoke.py")
    if args.child:
        return child(args.child)
    if not cases:
        parser.error(f"no case name contains {args.only!r}")
    start = time.perf_counter()
    try:
        counts = drive(cases)
    except KeyboardInterrupt:
        print("smoke: interrupted (time limit); the lines above are the cases that finished")
        return 1
    total = sum(counts.values())
    print(f"smoke: {counts['OK']} OK, {counts['BAD']} BAD, {counts['ERR']} ERR of "
          f"{len(cases)} cases ({total} reported) in {time.perf_counter() - start:.0f} s")
    return 0 if counts["OK"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())

