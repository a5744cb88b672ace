"""A small run of every CUDA path of trp::lowrank_conv2d, for compute-sanitizer (bench/run_gpu.sh
runs memcheck and racecheck over it): the fused forward for both schemes,
float32 (tf32 and 3xTF32) / float16 / bfloat16, NCHW and channels_last, and channel counts on and
off its 16-byte vector loads; the forward and backward of every implementation (the fused one's
backward is two_convs) once per scheme, dtype and layout; one measured (auto) choice. Exits 1
if an output is not finite."""

from __future__ import annotations

import sys

import torch

import trp_kernels as tk
from trp_kernels.schemes import factorization
from trp_kernels.ops import backends

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


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
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
    print("all outputs finite" if ok else "NON-FINITE OUTPUT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
