"""The emulated CUDA device of the tests: the real kernel and launcher sources of csrc/cuda,
built by the host compiler against the CPU emulation of the CUDA runtime (tests/emulation), as
a PyTorch device named ``emulated_cuda``. The CUDA cases of the SVD and conv tests run on it as
one more device parameter. What the emulation shows and what it cannot: docs/cuda_svd.md,
"CPU emulation".

Two builds, both incremental (ninja) and kept under build/emulated-cuda/: the kernels with the
runtime as a plain shared library (a few seconds per source), and the launchers with the device
as a torch extension linked to it (three sources that include ATen, about a minute each).
``native_build("asan")`` builds the kernels library with AddressSanitizer instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import types
import zlib

import torch

DEVICE = "emulated_cuda"
ROOT = pathlib.Path(__file__).resolve().parent.parent
EMULATION = ROOT / "tests" / "emulation"
BUILD = ROOT / "build" / "emulated-cuda"
CSRC = ROOT / "csrc"
KERNELS = sorted((CSRC / "cuda").glob("*.cu"))
RUNTIME = sorted((EMULATION / "runtime").glob("*.cpp"))
INCLUDES = [EMULATION / "include", EMULATION / "runtime", CSRC / "include"]
# Executables of the emulation: their main source under tests/emulation, and the kernel sources
# they link (a glob under csrc/cuda).
PROGRAMS = {"runtime_checks": None, "reduction_checks": None,
            "fused_conv_emulation": "lowrank_conv2d_fused_*.cu"}
VARIANT_FLAGS = {
    "release": ["-O2"],
    "asan": ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer"],
}
LIBRARY = "libtrp_emulated_kernels.so"


def unsupported_reason() -> str | None:
    """Why the emulation cannot run here, or None: its context switch is x86-64 code."""
    if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
        return "the CUDA emulation runs on x86-64 Linux only"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler"
    return None


def _ninja_file(variant: str) -> str:
    cxx = os.environ.get("CXX", "g++")
    flags = ["-std=c++20", "-g", "-fPIC", "-Wall", "-Wno-unknown-pragmas", *VARIANT_FLAGS[variant],
             *(f"-I{p}" for p in INCLUDES)]
    link = [f for f in VARIANT_FLAGS[variant] if f.startswith("-fsanitize")]
    lines = [
        f"cxx = {cxx}",
        f"flags = {' '.join(flags)}",
        f"link = {' '.join(link)}",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -x c++ -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "rule shared",
        "  command = $cxx -shared $link $in -o $out",
        "rule program",
        "  command = $cxx $link $in -o $out",
    ]
    objects = {}
    for source in RUNTIME + KERNELS:
        objects[source] = f"obj/{source.parent.name}_{source.stem}.o"
        lines.append(f"build {objects[source]}: cxx {source}")
    runtime = [objects[s] for s in RUNTIME]
    lines.append(f"build {LIBRARY}: shared {' '.join(objects.values())}")
    for program, kernels in PROGRAMS.items():
        linked = runtime + [objects[s] for s in KERNELS if kernels and s.match(kernels)]
        lines.append(f"build obj/{program}.o: cxx {EMULATION / (program + '.cpp')}")
        lines.append(f"build {program}: program obj/{program}.o {' '.join(linked)}")
    return "\n".join(lines) + "\n"


def native_build(variant: str = "release", targets: tuple[str, ...] = ()) -> pathlib.Path:
    """Builds (or brings up to date) ``targets`` of ``variant`` ("release" or "asan"): the
    kernels library (LIBRARY) and the programs (PROGRAMS), all of them by default; returns
    their directory."""
    out = BUILD / variant
    out.mkdir(parents=True, exist_ok=True)
    ninja_file = out / "build.ninja"
    text = _ninja_file(variant)
    if not ninja_file.exists() or ninja_file.read_text() != text:
        ninja_file.write_text(text)
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
    result = subprocess.run([sys.executable, "-m", "ninja", "-C", str(out), "-j", jobs, *targets],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the CUDA emulation failed:\n{result.stdout}{result.stderr}")
    return out


def _device_module() -> types.ModuleType:
    """The torch.<device> module PyTorch looks up for a device of this name."""
    module = types.ModuleType(DEVICE)
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: 0
    module._is_in_bad_fork = lambda: False
    module.manual_seed_all = lambda seed: None
    # torch.random.fork_rng (opcheck's AOT checks, even of CPU ops) saves and restores the RNG of
    # the current accelerator, which this device becomes: it has no generator of its own.
    module.get_rng_state = lambda device=None: torch.empty(0, dtype=torch.uint8)
    module.set_rng_state = lambda state, device=None: None
    return module


@functools.cache
def load() -> pathlib.Path:
    """Builds and loads the emulated device into this process (once); returns the directory
    of the kernels library in use."""
    from torch.utils import cpp_extension

    reason = unsupported_reason()
    if reason is not None:
        raise RuntimeError(reason)
    # A run under AddressSanitizer (tools and tests set it) uses that build of the kernels,
    # found first through LD_LIBRARY_PATH; the torch extension is the same. The device needs
    # the library alone: the programs are built by the tests that run them.
    kernels = native_build("release", (LIBRARY,))
    if torch._C._get_privateuse1_backend_name() != DEVICE:
        torch.utils.rename_privateuse1_backend(DEVICE)
        torch._register_device_module(DEVICE, _device_module())
    torch_dir = BUILD / "torch"
    torch_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="trp_emulated_cuda",
        sources=[str(p) for p in sorted((EMULATION / "torch").glob("*.cpp"))],
        extra_include_paths=[str(p) for p in [EMULATION / "torch" / "include", *INCLUDES,
                                              CSRC / "aten", CSRC]],
        extra_cflags=["-O1", "-Wno-unknown-pragmas"],
        extra_ldflags=[f"-L{kernels}", "-ltrp_emulated_kernels", f"-Wl,-rpath,{kernels}"],
        build_directory=str(torch_dir),
        is_python_module=False,
    )
    return kernels


def ops():
    return torch.ops.trp_emulation


ORDERS = ("forward", "reverse", "random")


def set_schedule(threads: str = "forward", blocks: str = "forward", seed: int = 0) -> None:
    """The order in which the emulation runs the threads of a block and the blocks of a grid
    (forward, reverse or random from ``seed``), from the next launch on."""
    ops().set_schedule(threads, blocks, seed)


_test_schedule = ("forward", "forward", 0)


def start_test(test_id: str) -> None:
    """A fresh emulated device for the test ``test_id``: no pending fault, the H200's limits,
    and a schedule of its own (thread order, block order and seed from a hash of the id, so
    that the tests between them run every order, each the same way on every run)."""
    global _test_schedule
    ops().reset_faults()
    ops().set_cooperative_launch(True)
    ops().set_sm_count(H200_SMS)
    h = zlib.crc32(test_id.encode())
    _test_schedule = (ORDERS[h % 3], ORDERS[h // 3 % 3], h)
    set_schedule(*_test_schedule)


@contextlib.contextmanager
def schedule(threads: str, blocks: str, seed: int = 0):
    """Runs the block with the given schedule (set_schedule), then the test's own again."""
    set_schedule(threads, blocks, seed)
    try:
        yield
    finally:
        set_schedule(*_test_schedule)


def finish_test() -> str:
    """The fault the test left pending, if any (a fault raises in the launcher that checks the
    launch; one left unchecked would surface here)."""
    return ops().fault_message()


H200_SMS = 132


@contextlib.contextmanager
def _device_setting(setter, value, default):
    setter(value)
    try:
        yield
    finally:
        setter(default)


def cooperative_launch(supported: bool):
    """Runs the block with the emulated device reporting (no) cooperative-launch support."""
    return _device_setting(ops().set_cooperative_launch, supported, True)


def sm_count(count: int):
    """Runs the block with the emulated device reporting ``count`` SMs: a cooperative grid is
    then smaller than its work, and its blocks loop over several work items."""
    return _device_setting(ops().set_sm_count, count, H200_SMS)


@functools.cache
def _symbols(obj: str) -> dict[int, str]:
    """Address -> demangled name of the functions defined in the shared object ``obj``."""
    out = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols[int(parts[0], 16)] = parts[2]
    return symbols


def launches(fn):
    """``(fn(), names)``: fn's result and the kernels it launched, in order, by their
    demangled names."""
    ops().clear_launches()
    result = fn()
    objects, offsets, *_ = ops().launches()
    return result, [_symbols(obj).get(offset, f"{obj}+{offset:#x}")
                    for obj, offset in zip(objects, offsets)]


def kernel_instantiations(directory: pathlib.Path) -> set[str]:
    """Every kernel template instantiation in the kernels library: the functions named
    *_kernel<...>(...) (every __global__ function of csrc/cuda is named so)."""
    kernel = re.compile(r"::\w+_kernel[<(]")
    return {name for name in _symbols(str(directory / LIBRARY)).values() if kernel.search(name)}
