"""The thread-heavy calls of the CPU ops, for a ThreadSanitizer build of them.

Run by test_thread_sanitizer.py as ``python tsan_workload.py LIBRARY`` with libtsan preloaded:
LIBRARY is the instrumented build of the CPU sources, loaded in place of trp_kernels._C (which
this process never imports: both register the ``trp`` namespace), so the ops are called through
``torch.ops.trp`` directly. What runs: the SVD ops' worker pool (batches of 1-5 matrices, k up to
768, both dtypes, 1, 2 and 4 threads), the pooling of mixed groups, cold and warm-started, two
Python threads calling the ops at once, and the conv op's forward and backward. Prints "workload done" at the end.
"""

import sys
import threading

import torch

torch.ops.load_library(sys.argv[1])
ops = torch.ops.trp
ENERGY = 0.9


def svd_calls(generator):
    for m, n, batch in ((2, 3, 5), (16, 144, 4), (64, 576, 3), (192, 192, 2), (520, 520, 1),
                        (512, 512, 2), (768, 768, 2)):
        for dtype in (torch.float32, torch.float64):
            W = torch.randn(batch, m, n, generator=generator).to(dtype)
            ops.truncated_svd(W, ENERGY, None, None)
            ops.lowrank_project(W, None, None, 8)
    groups = [torch.randn(3, 16, 144, generator=generator),
              torch.randn(2, 48, 48, generator=generator),
              torch.randn(2, 512, 1024, generator=generator),
              torch.randn(4, 32, 288, generator=generator).double()]
    lows, _, _, bases = ops.lowrank_project_groups(groups, ENERGY, None, None)
    # warm starts, as in TRP: the projected weights one training step later (a change of 2e-3
    # of their norm), from the bases just returned (csrc/cpu/warm_eigen.cpp)
    moved = [L + 2e-3 * L.norm() / L.numel() ** 0.5 * torch.randn(L.shape, generator=generator)
             .to(L.dtype) for L in lows]
    ops.lowrank_project_groups(moved, ENERGY, None, None, list(bases))


def conv_calls(generator):
    x = torch.randn(4, 16, 12, 12, generator=generator)
    for scheme, w1, w2 in (("channel", (5, 16, 3, 3), (8, 5, 1, 1)),
                           ("spatial", (5, 16, 3, 1), (8, 5, 1, 3))):
        weight1 = torch.randn(w1, generator=generator)
        weight2 = torch.randn(w2, generator=generator)
        y = ops.lowrank_conv2d(x, weight1, weight2, None, [1, 1], [1, 1], [1, 1], scheme)
        ops.lowrank_conv2d_backward(torch.randn(y.shape, generator=generator), x, weight1,
                                    weight2, [1, 1], [1, 1], [1, 1], scheme,
                                    [True, True, True, True])


for threads in (1, 2, 4):
    torch.set_num_threads(threads)
    svd_calls(torch.Generator().manual_seed(threads))
    conv_calls(torch.Generator().manual_seed(threads))

# Two callers at once: each op call starts its own workers.
torch.set_num_threads(2)
callers = [threading.Thread(target=svd_calls, args=(torch.Generator().manual_seed(10 + i),))
           for i in range(2)]
for caller in callers:
    caller.start()
for caller in callers:
    caller.join()
accepted = ops.warm_start_counts(False)[0]
assert accepted > 0, "no warm solve was accepted: the warm path did not run"
print(f"workload done ({accepted} warm solves)")
