"""A small run of every CUDA path of the SVD ops and of trp::lowrank_conv2d, for
compute-sanitizer (bench/run_gpu.sh runs memcheck over it, racecheck when asked; one process,
so torch and cuDNN load once under the tool).

SVD (TRP_SVD_IMPL=jacobi): truncated_svd and lowrank_project through the fused kernel (wide,
tall, odd k), the blocked Jacobi (padded and tall), the float64 refinement pass, the completion
of kept zero singular values, zero and non-finite matrices. Small matrices keep the sanitizers'
slowdown bearable; the 64-wide pair tile of orders > 512 is the same code with another tile
constant and is left to the CUDA tests (tests/ops/test_svd_cuda.py), since its smallest case (513 x 513) takes minutes under
racecheck.

Conv: the fused forward for both schemes, float32 (tf32 and 3xTF32) / float16 / bfloat16, NCHW
and channels_last, channel counts on and off its 16-byte vector loads; the forward and backward
of every implementation (the fused one's backward is two_convs) once per scheme, dtype and
layout; one measured (auto) choice.

Exits 1 if an SVD result breaks the contract or a conv output is not finite.
"""

from __future__ import annotations

import sys

import torch

import trp_kernels as tk
from trp_kernels.ops import backends
from trp_kernels.ops.svd import reference_truncated_svd
from trp_kernels.schemes import factorization

# (shape, dtypes): fused wide / tall with odd k; blocked (order padded 70 -> 96; tall).
CASES = [
    ((2, 12, 20), (torch.float32, torch.float64)),
    ((2, 9, 5), (torch.float32, torch.float64)),
    ((2, 70, 90), (torch.float32, torch.float64)),
    ((1, 100, 66), (torch.float64,)),
]


def batch_for(shape, dtype, generator):
    """Random matrices, then a zero matrix, a rank-2 one (completion without criteria) and,
    last, one holding a NaN."""
    b, m, n = shape
    W = torch.randn(b + 3, m, n, generator=generator, dtype=torch.float64)
    W[b] = 0
    W[b + 1] = torch.randn(m, 2, generator=generator, dtype=torch.float64) @ torch.randn(
        2, n, generator=generator, dtype=torch.float64)
    W[b + 2, 0, 0] = float("nan")
    return W.to(dtype)


def svd_paths() -> bool:
    """Every SVD path once; False when a result breaks the contract."""
    g = torch.Generator().manual_seed(0)
    failures = 0
    for shape, dtypes in CASES:
        for dtype in dtypes:
            W = batch_for(shape, dtype, g)
            finite = W[:-1]
            for rule in ({}, {"energy": 0.9}):
                U, S, V, rank = tk.truncated_svd(W.cuda(), **rule, check_finite=False)
                low, sub, rank_p = tk.lowrank_project(W.cuda(), **rule, check_finite=False)
                torch.cuda.synchronize()
                ref = reference_truncated_svd(finite.double(), **rule)
                ok = (
                    torch.equal(rank.cpu(), rank_p.cpu())
                    and int(rank[-1]) == -1
                    and torch.equal(rank[:-1].cpu(), ref.rank)
                    and all(torch.isfinite(t[:-1]).all() for t in (U, S, V, low, sub))
                )
                failures += not ok
                verdict = "ok " if ok else "BAD"
                print(f"{verdict} {tuple(W.shape)} {dtype} {rule} ranks {rank.tolist()}")
    return failures == 0



GEOMETRY = ((2, 1), (1, 1), (1, 2))  # stride, padding, dilation: both halos, uneven steps


def run(scheme, dtype, channels, channels_last, generator, with_cudnn):
    N, rank = 40, 20
    shape1, shape2 = factorization.factor_shapes((N, channels, 3, 3), rank, scheme)
    x = torch.randn(2, channels, 9, 11, device="cuda", generator=generator).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = [x, torch.randn(shape1, device="cuda", generator=generator).to(dtype) * 0.3,
              torch.randn(shape2, device="cuda", generator=generator).to(dtype) * 0.3,
              torch.randn(N, device="cuda", generator=generator).to(dtype)]
    inputs = [t.requires_grad_() for t in inputs]
    finite = True
    # cuDNN's kernels once per dtype and layout are enough; ours see both channel counts.
    for impl in ("fused", "two_convs", "dense") if with_cudnn else ("fused",):
        with backends.forced(conv=impl):
            y = tk.lowrank_conv2d(*inputs, *GEOMETRY, scheme)
            grads = torch.autograd.grad(y, inputs, torch.ones_like(y)) if with_cudnn else ()
        finite &= all(bool(torch.isfinite(t).all()) for t in (y, *grads))
    return finite


def conv_paths() -> bool:
    """Every conv path once; False when an output is not finite."""
    g = torch.Generator(device="cuda").manual_seed(0)
    ok = True
    for scheme in ("channel", "spatial"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for allow_tf32 in ((True, False) if dtype == torch.float32 else (True,)):
                torch.backends.cudnn.allow_tf32 = allow_tf32
                for channels in (24, 13):
                    for channels_last in (False, True):
                        ok &= run(scheme, dtype, channels, channels_last, g, channels == 24)
    with backends.forced(conv="auto"):  # the timing path: CUDA events, one synchronisation
        x = torch.randn(3, 16, 8, 8, device="cuda", generator=g)
        w1 = torch.randn(5, 16, 3, 3, device="cuda", generator=g)
        w2 = torch.randn(16, 5, 1, 1, device="cuda", generator=g)
        ok &= bool(torch.isfinite(tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, "channel")).all())
    torch.cuda.synchronize()
    print("conv: all outputs finite" if ok else "conv: NON-FINITE OUTPUT")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    ok = svd_paths()
    ok &= conv_paths()
    print("sanitize: all results as expected" if ok else "sanitize: BAD RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
