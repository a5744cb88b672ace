"""Builds trp_kernels._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc
is found. Environment switches: TRP_FORCE_CUDA=1 builds CUDA regardless (e.g. a docker build
without a GPU), TRP_NO_CUDA=1 never builds it; TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured
by torch's BuildExtension.

Install with `pip install -v --no-build-isolation .` (or `-e .`) after installing torch: with
build isolation pip builds in a fresh environment without the torch you have (and pyproject.toml
deliberately does not ask for one: it would download a second, CUDA-enabled torch just to
compile against), and -v shows the build's progress lines (docs/install.md, "Building", gives
its measured time).
"""

import copy
import glob
import os
import time

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # a message for the person building
    raise SystemExit(
        "trp_kernels builds against the torch you have, and this build cannot import torch. "
        "If torch is installed, pip is building in an isolated environment without it: install "
        "with `pip install --no-build-isolation .` (or `pip install --no-build-isolation -e .` "
        "for an editable install), after `pip install ninja \"setuptools>=77\"`. If torch is "
        "not installed, install it first (a CPU build is enough, e.g. `pip install "
        "torch==2.13.0`)."
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_LAUNCHERS = os.path.join("csrc", "cuda", "")


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _use_cuda():
    if _flag("TRP_NO_CUDA"):
        return False
    if _flag("TRP_FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    sources = (_sources("csrc/*.cpp") + _sources("csrc/aten/trp/*.cpp")
               + _sources("csrc/cpu/*.cpp") + _sources("csrc/python/*.cpp"))
    # csrc/include: torch-free headers (also the CUDA kernels'); csrc/aten: those using ATen.
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "aten")]
    # -g0 overrides the -g of Python's own CFLAGS: debug info for ATen's templates was 11.2 of the
    # 11.5 MB of _C and most of its compile time, for a release build nobody steps through.
    # No -fopenmp: no kernel here runs an OpenMP region (the CPU SVD's workers are plain threads,
    # csrc/cpu/svd_core.cpp says why).
    cxx = ["-O3", "-g0", "-fvisibility=hidden"]
    link = []
    if not _use_cuda():
        return CppExtension(
            "trp_kernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=link,
        )
    sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*_launch.cpp")
    # No --use_fast_math: it flushes float32 denormals and approximates division and sqrt,
    # which the SVD kernels' accuracy contract does not allow.
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "trp_kernels._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
    )


def translation_units(sources):
    """The .cpp ``sources`` grouped into the translation units compiled: name -> members. Every
    C++ source parses ATen's headers (about 4 s each), so the CPU sources are compiled as one
    unit and the CUDA launchers as another; the .cu files stay one unit each, for nvcc."""
    cpp = [s for s in sources if s.endswith(".cpp")]
    launchers = [s for s in cpp if s.startswith(CUDA_LAUNCHERS)]
    units = {"trp_cpu": [s for s in cpp if s not in launchers], "trp_cuda_launch": launchers}
    return {name: members for name, members in units.items() if members}


def unit_text(unit_path, members):
    """The source of a translation unit at ``unit_path`` that includes ``members``."""
    here = os.path.dirname(unit_path)
    return "// Written by setup.py: these sources compiled as one unit.\n" + "".join(
        f'#include "{os.path.relpath(m, here).replace(os.sep, "/")}"\n' for m in members)


def _write_if_changed(path, text):
    # An unchanged unit keeps its time stamp, so ninja rebuilds it only when a member (tracked
    # through the compiler's dependency file) changes.
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _children_cpu_seconds():
    times = os.times()
    return times.children_user + times.children_system


class BuildInUnits(BuildExtension):
    """torch's BuildExtension compiling ``translation_units`` instead of each .cpp file, saying
    what it compiles and how long it took (pip shows these lines with -v)."""

    def build_extension(self, ext):
        unit_dir = os.path.join(self.build_temp, "units")
        # A copy: the declared extension keeps its real sources (sdist, a second build).
        in_units = copy.copy(ext)
        in_units.sources = [s for s in ext.sources if not s.endswith(".cpp")]
        # setuptools skips an extension newer than its sources: the members are those.
        in_units.depends = list(ext.depends)
        for name, members in translation_units(ext.sources).items():
            path = os.path.join(unit_dir, name + ".cpp")
            _write_if_changed(path, unit_text(path, members))
            print(f"trp_kernels: unit {name} = {' + '.join(members)}", flush=True)
            in_units.sources.append(path)
            in_units.depends += members
        print(f"trp_kernels: compiling {len(in_units.sources)} translation unit(s), "
              f"MAX_JOBS={os.environ.get('MAX_JOBS', 'unset')}", flush=True)
        start, cpu = time.perf_counter(), _children_cpu_seconds()
        super().build_extension(in_units)
        print(f"trp_kernels: {ext.name} built in {time.perf_counter() - start:.0f} s "
              f"({_children_cpu_seconds() - cpu:.0f} s of CPU)", flush=True)


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import it
    setup(
        packages=find_packages(include=["trp_kernels", "trp_kernels.*"]),
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildInUnits},
    )
