"""A small run of trp::truncated_svd and trp::lowrank_project through every CUDA path, for
compute-sanitizer (bench/run_gpu.sh runs memcheck and racecheck on it, TRP_SVD_IMPL=jacobi):
the fused kernel (wide, tall, odd k), the blocked Jacobi (padded and tall), the float64
refinement pass, the completion of kept zero singular values, zero and non-finite matrices.
Small matrices keep the sanitizers' slowdown bearable; the 64-wide pair tile of orders > 512 is
the same code with another tile constant and is left to the CUDA tests (tests/ops/test_svd_cuda.py),
since its smallest case (513 x 513) takes minutes under racecheck."""

from __future__ import annotations

import sys

import torch

import trp_kernels as tk
from trp_kernels.ops.svd import reference_truncated_svd

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


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
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
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
