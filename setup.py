"""Builds trp_kernels._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc
is found. Environment switches: TRP_FORCE_CUDA=1 builds CUDA regardless (e.g. a docker build
without a GPU), TRP_NO_CUDA=1 never builds it; TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured
by torch's BuildExtension.

Install with `pip install --no-build-isolation -e .` after installing torch: build isolation
would download a second, CUDA-enabled torch just to compile against.
"""

import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - a message for the person building
    raise SystemExit(
        "trp_kernels needs torch installed before it is built: `pip install torch` "
        "(a CPU build is enough), then `pip install --no-build-isolation -e .`"
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))


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
               + _sources("csrc/cpu/*.cpp"))
    # csrc/include: torch-free headers (also the CUDA kernels'); csrc/aten: those using ATen.
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "aten")]
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    # ATen's parallel_for is an inline OpenMP loop: without -fopenmp it would run serially.
    link = ["-fopenmp"]
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


setup(
    packages=find_packages(include=["trp_kernels", "trp_kernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
