"""Every kernel template instantiation that a launcher can reach runs on the emulated CUDA device
(tests/emulated_cuda.py), each through the public ops and checked against float64 references:
the tour below must launch every function named *_kernel in the emulated kernels library --
a new instantiation that no call reaches fails it. It also runs what the CUDA cases leave to
it: the blocked Jacobi with 64-wide tiles (k > 512, half a minute a call here), on its
cooperative path and on its per-phase path; and for 32-wide tiles, all three launch paths:
cooperative, cooperative on a grid smaller than its work (a device with one SM), and per
phase."""

from __future__ import annotations

import pytest
import torch

import emulated_cuda
import trp_kernels as tk
from conv_inputs import conv_inputs, relative_error
from testing import EMULATED_CUDA, assert_svd_contract
from trp_kernels.ops import backends
from trp_kernels.ops.conv import reference_lowrank_conv2d

pytestmark = pytest.mark.parametrize("device", [pytest.param(EMULATED_CUDA, id="emulated-cuda")])


def svd_checked(W, device, rule):
    out = tk.truncated_svd(W.to(device), **rule)
    assert_svd_contract(W, out, rule, exact_rank=True)


def projection_checked(W, device, rule):
    low, _, rank = tk.lowrank_project(W.to(device), **rule)
    U, S, V, rank_svd = tk.truncated_svd(W, **rule)  # the CPU op
    assert torch.equal(rank.cpu(), rank_svd)
    ref = (U.double() * S.double().unsqueeze(-2)) @ V.double().mT
    tol = 1e-5 if W.dtype == torch.float32 else 1e-12
    assert relative_error(low, ref) <= tol


def svd_tour(device):
    g = torch.Generator().manual_seed(3)
    fused32, fused64 = torch.randn(2, 20, 50, generator=g), torch.randn(2, 33, 17, generator=g,
                                                                          dtype=torch.float64)
    blocked32 = torch.randn(2, 70, 100, generator=g)
    blocked64 = torch.randn(2, 90, 67, generator=g, dtype=torch.float64)
    wide = torch.randn(1, 520, 530, generator=g)
    svd_checked(fused32, device, {"energy": 0.9})          # fused <float, float>
    projection_checked(fused32, device, {"max_rank": 7})   # fused <float, double>
    svd_checked(fused64, device, {})                       # fused <double, double>
    projection_checked(fused64, device, {"threshold": 0.5})
    svd_checked(blocked32, device, {})                     # scaling, spectrum, factors <float>
    projection_checked(blocked64, device, {"energy": 0.99})  # <double>, two passes
    with emulated_cuda.cooperative_launch(False):          # the per-phase kernels, T = 32
        svd_checked(blocked32[:1], device, {"energy": 0.9})
        svd_checked(wide, device, {"energy": 0.9})         # ... and T = 64
    with emulated_cuda.sm_count(4):                        # the persistent kernel, T = 64
        svd_checked(wide, device, {"max_rank": 40})


def conv_tour(device):
    case = dict(C=12, N=20, rank=9, kernel=(3, 3), size=(9, 10), scale=0.5)
    for dtype, tf32 in ((torch.float32, True), (torch.float32, False), (torch.float16, False),
                        (torch.bfloat16, False)):
        torch.backends.cudnn.allow_tf32 = tf32  # float32: tf32 operands, or 3xTF32
        for channels_last in (False, True):
            x, w1, w2, b = conv_inputs(device, "spatial", dtype=dtype,
                                       channels_last=channels_last, **case)
            with backends.forced(conv="fused"):
                y = tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "spatial")
            ref = reference_lowrank_conv2d(*(t.double().cpu() for t in (x, w1, w2, b)),
                                           1, 1, 1, "spatial")
            assert relative_error(y, ref) < (1e-2 if dtype != torch.float32 or tf32 else 1e-4)
    # the measured choice's device hold: auto on a problem it has not met
    x, w1, w2, b = conv_inputs(device, "channel", C=11, N=5, rank=2, size=(6, 7))
    backends.clear_conv_choices()
    with backends.forced(conv="auto"):
        y = tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")
    assert relative_error(y, reference_lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")) < 1e-12


def test_every_kernel_instantiation_runs(device):
    kernels = emulated_cuda.load()
    with backends.forced(svd="jacobi"):
        _, launched = emulated_cuda.launches(lambda: (svd_tour(device), conv_tour(device)))
    every = emulated_cuda.kernel_instantiations(kernels)
    assert set(launched) == every, {"never launched": sorted(every - set(launched))}


# The blocked Jacobi's launches: cooperative with the H200's grid (one block per work item of
# the largest phase), cooperative on a 1-SM device (8 blocks, each looping over several work
# items), and one launch per phase (what graph capture and devices without cooperative launch
# get).
LAUNCH_PATHS = {"cooperative": (True, emulated_cuda.H200_SMS), "cooperative-1-sm": (True, 1),
                "per-phase": (False, emulated_cuda.H200_SMS)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", LAUNCH_PATHS)
def test_blocked_jacobi_launch_paths(device, path, dtype):
    cooperative, sms = LAUNCH_PATHS[path]
    W = torch.randn(3, 96, 130, dtype=dtype)
    with (backends.forced(svd="jacobi"), emulated_cuda.cooperative_launch(cooperative),
          emulated_cuda.sm_count(sms)):
        _, launched = emulated_cuda.launches(
            lambda: (svd_checked(W, device, {}), projection_checked(W, device, {"energy": 0.9})))
    assert any("persistent" in name for name in launched) == cooperative
