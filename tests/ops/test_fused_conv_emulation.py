"""The fused CUDA low-rank conv kernel on the CPU, through its host-side emulation
(tests/emulation/): the real kernel source compiled by the host C++ compiler against emulated
warp primitives, every output compared with a float64 reference. It checks the kernel's
indexing, tiling, halos, padding and data flow on machines without a GPU; what only a GPU can
show (fragment layouts in hardware, races, speed) is for the CUDA tests (test_conv_cuda.py) and
the sanitizers."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EMULATION = ROOT / "tests" / "emulation"
FLAGS = ["-std=c++20", "-O1", "-Wno-unknown-pragmas"]
# What the emulation needs besides C++20: ucontext fibers and a float16 type.
PROBE = "#include <ucontext.h>\nint main() { ucontext_t c; getcontext(&c); _Float16 h = 1; return (int)(float)h - 1; }\n"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    build = tmp_path_factory.mktemp("emulation")
    probe = build / "probe.cpp"
    probe.write_text(PROBE)
    if subprocess.run([cxx, *FLAGS, str(probe), "-o", str(build / "probe")],
                      capture_output=True).returncode != 0:
        pytest.skip(f"{cxx} lacks ucontext or _Float16")
    exe = build / "fused_conv_emulation"
    result = subprocess.run(
        [cxx, *FLAGS, "-I", str(EMULATION / "include"), "-I", str(ROOT / "csrc" / "include"),
         str(EMULATION / "fused_conv_emulation.cpp"), "-o", str(exe)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32", "f32x3"])
def test_fused_kernel_matches_float64_in_emulation(emulator, dtype):
    result = subprocess.run([str(emulator), dtype], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
