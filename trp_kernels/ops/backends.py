"""Which implementation the ops run: the one home of that choice.

Two switches, each an environment variable read on every call (so a test, a benchmark or a user
can change it between calls; ``forced`` sets one for a block) whose values are an enum:

``TRP_SVD_IMPL`` (``SvdImpl``) for ``truncated_svd``, ``lowrank_project`` and
``lowrank_project_groups``: ``jacobi``, the compiled op (LAPACK on the CPU, the Jacobi kernels
on CUDA), or ``eigh``, the composite path of torch calls (svd_composite.py), correct on any
device. The choice is made here, in Python (``svd_impl``).

``TRP_CONV_IMPL`` (``ConvImpl``) for ``lowrank_conv2d``: ``fused``, ``two_convs`` or
``dense``. The op reads the variable itself, in C++, where ``auto`` times the candidates once
per problem; Python tells it only whether ``fused`` may be a candidate (``apply_validation``).

``auto`` (or unset) means the default policy of docs/design.md, "CUDA defaults and switches":
a custom CUDA kernel becomes a default only once a committed GPU run has validated it. The
record of those runs is the two ``*_VALIDATED_BY`` constants below.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum

import torch

# The hardware-validation record: the result file under bench/results/ of the committed GPU run
# in which the kernel family passed its CUDA tests and compute-sanitizer memcheck; None: not
# validated yet. Flipping a default on CUDA is one edit here.
CUDA_SVD_VALIDATED_BY: str | None = (       # the Jacobi SVD kernels
    "bench/results/NVIDIA-H200-20261204/validation-summary.txt")
FUSED_CONV_VALIDATED_BY: str | None = None   # the fused low-rank conv kernel


class SvdImpl(str, Enum):
    """The values of ``TRP_SVD_IMPL``."""

    AUTO = "auto"        # the default policy (``default_svd_impl``)
    JACOBI = "jacobi"    # the compiled op, torch.ops.trp.*
    EIGH = "eigh"        # the composite path: float64 Gram matrix + torch.linalg.eigh


class ConvImpl(str, Enum):
    """The values of ``TRP_CONV_IMPL``."""

    AUTO = "auto"             # time the candidates once per problem, keep the fastest
    FUSED = "fused"           # one CUDA kernel for both convs (two_convs where it cannot run)
    TWO_CONVS = "two_convs"   # two ATen convolutions
    DENSE = "dense"           # the dense weight rebuilt from the factors, one convolution


SVD_ENV, CONV_ENV = "TRP_SVD_IMPL", "TRP_CONV_IMPL"


def _choice(choices: type[Enum], value, name: str):
    try:
        return choices(value or "auto")
    except ValueError:
        allowed = ", ".join(repr(c.value) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def svd_setting() -> SvdImpl:
    """What ``TRP_SVD_IMPL`` says now (``AUTO`` when unset or empty); ValueError naming the
    variable for any other value."""
    return _choice(SvdImpl, os.environ.get(SVD_ENV, ""), SVD_ENV)


def conv_setting() -> ConvImpl:
    """What ``TRP_CONV_IMPL`` says now (``AUTO`` when unset or empty)."""
    return _choice(ConvImpl, os.environ.get(CONV_ENV, ""), CONV_ENV)


# The largest k = min(m, n) of the fused SVD kernel, one thread block per matrix
# (csrc/include/trp/svd/svd_cuda.h, kFusedSvdMaxK); larger matrices take the blocked Jacobi.
FUSED_SVD_MAX_K = 64


def default_svd_impl(device: torch.device, k: int) -> SvdImpl:
    """The SVD path on ``device`` for matrices with k = min(m, n) when nothing is forced: the
    compiled op on the CPU; on CUDA, once the Jacobi kernels are validated, the compiled op for
    the fused kernel's sizes, since the blocked Jacobi above them ran slower than the composite
    path on the H200 (docs/cuda_svd.md, "Measured on an H200"); the composite path everywhere
    else."""
    if device.type == "cpu":
        return SvdImpl.JACOBI
    if device.type == "cuda" and CUDA_SVD_VALIDATED_BY is not None and k <= FUSED_SVD_MAX_K:
        return SvdImpl.JACOBI
    return SvdImpl.EIGH


def svd_impl(device, k: int) -> SvdImpl:
    """The path the SVD ops take now for matrices with k = min(m, n) on ``device``."""
    setting = svd_setting()
    return default_svd_impl(torch.device(device), k) if setting is SvdImpl.AUTO else setting


@contextmanager
def forced(*, svd=None, conv=None):
    """Runs the block with ``TRP_SVD_IMPL`` = ``svd`` and ``TRP_CONV_IMPL`` = ``conv`` (an enum
    member or its value; ``"auto"``: the default policy; None: left as it is), then restores the
    previous settings. Sets the process environment, so it is not thread-local."""
    changes = {}
    if svd is not None:
        changes[SVD_ENV] = _choice(SvdImpl, svd, "svd").value
    if conv is not None:
        changes[CONV_ENV] = _choice(ConvImpl, conv, "conv").value
    previous = {env: os.environ.get(env) for env in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for env, value in previous.items():
            if value is None:
                del os.environ[env]
            else:
                os.environ[env] = value


def apply_validation() -> None:
    """Lets the automatic conv choice on CUDA consider ``fused`` exactly when the record above
    names a GPU run that validated it (the op ``trp::set_fused_conv_in_auto``;
    ``trp::fused_conv_in_auto`` reads it back). Called once at import (library.py)."""
    torch.ops.trp.set_fused_conv_in_auto(FUSED_CONV_VALIDATED_BY is not None)


FUSED_KERNEL = "lowrank_conv2d_fused_kernel"   # in the name of every fused-conv CUDA kernel


def fused_launches(fn):
    """``(fn(), n)``: fn's result and how many fused-conv kernels it launched on CUDA, counted
    by torch.profiler (CUPTI). Shows which implementation a call really ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    count = sum(FUSED_KERNEL in e.name for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA)
    return result, count
