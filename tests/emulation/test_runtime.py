"""The CUDA emulation itself (tests/emulation/include/cuda_emulation.h), through the small
kernels of runtime_checks.cpp: what they must compute in every thread and block order, the
launches a device refuses, and the faults the emulation must report -- a barrier some threads
never reach, threads at different barriers (also when one leaves a loop early), lanes at
different collectives, a write just outside a block's dynamic shared memory -- each naming the
file:line where it happened. Also the AddressSanitizer build: one byte past a block's dynamic
shared memory is reported, and the fused conv kernels run clean under it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

import emulated_cuda

pytestmark = [
    pytest.mark.emulated_cuda,
    pytest.mark.skipif(emulated_cuda.unsupported_reason() is not None,
                       reason=str(emulated_cuda.unsupported_reason())),
]

SOURCE = emulated_cuda.EMULATION / "runtime_checks.cpp"


@pytest.fixture(scope="module")
def release():
    return emulated_cuda.native_build("release")


def run(directory, check, order="forward", env=None):
    return subprocess.run([str(directory / "runtime_checks"), check, order], capture_output=True,
                          text=True, timeout=300, env=env)


def fault_sites(check):
    """The file:line of every line of runtime_checks.cpp marked as the site of ``check``."""
    lines = SOURCE.read_text().splitlines()
    return [f"{SOURCE}:{i + 1}" for i, line in enumerate(lines)
            if line.endswith(f"// fault site: {check}")]


@pytest.mark.parametrize("order", emulated_cuda.ORDERS)
@pytest.mark.parametrize("check", ["barriers", "warp_collectives", "atomics", "grid_sync",
                                   "shared_memory", "launch_errors", "orders_reveal_a_race"])
def test_kernels_compute_what_cuda_defines(release, check, order):
    result = run(release, check, order)
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stdout + result.stderr


@pytest.mark.parametrize("order", emulated_cuda.ORDERS)
@pytest.mark.parametrize("check, message", [
    ("divergent_barrier", "threads wait at different barriers"),
    ("barrier_in_branch",
     r"deadlock: block \(0, 0, 0\) of 64 threads: 63 exited, 1 waiting at __syncthreads"),
    ("early_exit",
     r"deadlock: block \(0, 0, 0\) of 64 threads: 1 exited, 63 waiting at __syncthreads"),
    ("mask_mismatch", "lanes of a warp meet at different collectives"),
    ("uncooperative_grid_sync", r"grid.sync\(\) \(.*\) in a kernel not launched cooperatively"),
    ("trap", r"__trap\(\) called"),
    ("loop_exit", "threads wait at different barriers"),
    ("unordered_rounds", r"block \(0, 0, 0\): a thread wrote outside its 8576 bytes of dynamic "
                         r"shared memory \(changed: bytes -\d+ to -\d+ from its start\) after the "
                         r"start of the block, by __syncthreads_or"),
])
def test_faults_name_their_site(release, check, message, order):
    result = run(release, check, order)
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stdout + result.stderr
    reported = result.stdout.splitlines()[0]
    assert re.search(message, reported), reported
    sites = fault_sites(check)
    assert sites and all(site in reported for site in sites), (sites, reported)


def test_address_sanitizer_build():
    """The AddressSanitizer build reports a write one byte past a block's dynamic shared memory,
    and runs the fused conv kernels, whose shared-memory layout is the most intricate, clean."""
    asan = emulated_cuda.native_build("asan", ("runtime_checks", "fused_conv_emulation"))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    for check in ("barriers", "grid_sync", "warp_collectives"):
        result = run(asan, check, "random", env)
        assert result.returncode == 0, result.stdout + result.stderr
    result = run(asan, "shared_overflow", env=env)
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr and "shared_overflow_kernel" in result.stderr
    for dtype in ("f32x3", "bf16"):
        result = subprocess.run([str(asan / "fused_conv_emulation"), dtype, "random"],
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
