"""The fused low-rank conv kernels on the CPU emulation of CUDA (tests/emulated_cuda.py), on the
awkward shapes of tests/emulation/fused_conv_emulation.cpp -- tiles across images, halos,
dilations, paddings wider than the kernel, several rank passes and column tiles, misaligned
rows, tilings for 1 to 132 SMs -- every output against a float64 reference, in every thread and
block order. The launcher's cases (test_conv_cuda.py) run on the emulated device too; what only
a GPU can show is listed in docs/cuda_conv.md, "CPU emulation"."""

from __future__ import annotations

import subprocess

import pytest

import emulated_cuda

pytestmark = [
    pytest.mark.emulated_cuda,
    pytest.mark.skipif(emulated_cuda.unsupported_reason() is not None,
                       reason=str(emulated_cuda.unsupported_reason())),
]


@pytest.fixture(scope="module")
def harness():
    return emulated_cuda.native_build("release") / "fused_conv_emulation"


@pytest.mark.parametrize("order", emulated_cuda.ORDERS)
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32", "f32x3"])
def test_fused_kernel_matches_float64_in_emulation(harness, dtype, order):
    result = subprocess.run([str(harness), dtype, order], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
