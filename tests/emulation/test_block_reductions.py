"""The block-wide reductions of csrc/include/trp (block_sum, block_max, block_argmax) on the
CUDA emulation, called one right after another as their comments allow, in every thread order
(tests/emulation/reduction_checks.cpp): the kernels always put another barrier between two
calls, so only this shows what the reductions' own first barrier is for."""

from __future__ import annotations

import subprocess

import pytest

import emulated_cuda

pytestmark = [
    pytest.mark.emulated_cuda,
    pytest.mark.skipif(emulated_cuda.unsupported_reason() is not None,
                       reason=str(emulated_cuda.unsupported_reason())),
]


@pytest.mark.parametrize("order", emulated_cuda.ORDERS)
def test_back_to_back_reductions_give_every_thread_the_result(order):
    program = emulated_cuda.native_build("release", ("reduction_checks",)) / "reduction_checks"
    result = subprocess.run([str(program), order], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stdout + result.stderr
