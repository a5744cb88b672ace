"""Which implementation the ops run: the one home of that choice.

Two switches, each an environment variable read on every call (so a test, a benchmark or a user
can change it between calls; ``forced`` sets one for a block) whose values are an enum:

``TRP_SVD_IMPL`` (``SvdImpl``) for ``truncated_svd``, ``lowrank_project`` and
``lowrank_project_groups``: ``jacobi``, the compiled op (LAPACK on the CPU, the Jacobi kernels
on CUDA), or ``eigh``, the composite path of torch calls (svd_composite.py), correct on any
device. The choice is made here, in Python (``svd_impl``).

``TRP_CONV_IMPL`` (``ConvImpl``) for ``lowrank_conv2d``: ``fused``, ``two_convs`` or
``dense``. The op reads the variable itself, in C++, where ``auto`` times the candidates once
per problem; Python tells it whether ``fused`` may be a candidate (``apply_validation``) and
in which file its choices are kept across processes (``TRP_CONV_CHOICES``,
``apply_conv_choice_file``; ``conv_choices`` lists them, ``clear_conv_choices`` forgets them).

``TRP_EIGH_IMPL`` (``EighImpl``) for the eigensolver of the composite path: ``torch``
(``torch.linalg.eigh``) or ``cusolver_batched`` (cuSOLVER's cusolverDnXsyevBatched on CUDA,
cusolver_eigh.py; ``torch.linalg.eigh`` elsewhere). Python chooses it (``eigh_function``).

``auto`` (or unset) means the default policy of docs/design.md, "CUDA defaults and switches":
a custom CUDA kernel becomes a default only once a committed GPU run has validated it. The
record of those runs is the two ``*_VALIDATED_BY`` constants below.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from enum import Enum
from typing import NamedTuple

import torch

ops = torch.ops.trp

# The hardware-validation record: the result file under bench/results/ of the committed GPU run
# in which the kernel family passed its CUDA tests and compute-sanitizer memcheck; None: not
# validated yet. Flipping a default on CUDA is one edit here.
CUDA_SVD_VALIDATED_BY: str | None = (       # the Jacobi SVD kernels
    "bench/results/NVIDIA-H200-20261204/validation-summary.txt")
FUSED_CONV_VALIDATED_BY: str | None = None   # the fused low-rank conv kernel
CUSOLVER_EIGH_VALIDATED_BY: str | None = None   # cusolverDnXsyevBatched through cusolver_eigh.py


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


class EighImpl(str, Enum):
    """The values of ``TRP_EIGH_IMPL``."""

    AUTO = "auto"                          # the default policy (``default_eigh_impl``)
    TORCH = "torch"                        # torch.linalg.eigh
    CUSOLVER_BATCHED = "cusolver_batched"  # cusolverDnXsyevBatched (cusolver_eigh.py) on CUDA


SVD_ENV, CONV_ENV, EIGH_ENV = "TRP_SVD_IMPL", "TRP_CONV_IMPL", "TRP_EIGH_IMPL"


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


def eigh_setting() -> EighImpl:
    """What ``TRP_EIGH_IMPL`` says now (``AUTO`` when unset or empty)."""
    return _choice(EighImpl, os.environ.get(EIGH_ENV, ""), EIGH_ENV)


def default_eigh_impl(device: torch.device) -> EighImpl:
    """The composite path's eigensolver on ``device`` when nothing is forced: cuSOLVER's batched
    one on CUDA once a committed GPU run has validated it (``CUSOLVER_EIGH_VALIDATED_BY``) and
    where this process's cuSOLVER has it; ``torch.linalg.eigh`` everywhere else."""
    from .cusolver_eigh import unavailable_reason

    if (device.type == "cuda" and CUSOLVER_EIGH_VALIDATED_BY is not None
            and unavailable_reason(device) is None):
        return EighImpl.CUSOLVER_BATCHED
    return EighImpl.TORCH


def eigh_function(device):
    """The function the composite path diagonalises its Gram matrices on ``device`` with, by
    ``TRP_EIGH_IMPL``: ``torch.linalg.eigh`` or ``cusolver_eigh.syev_batched`` (same contract).
    ``cusolver_batched`` forced on a CPU tensor means ``torch.linalg.eigh``, as cuSOLVER has no
    CPU side; forced on a CUDA device whose cuSOLVER lacks the routine, RuntimeError saying
    why."""
    from .cusolver_eigh import syev_batched, unavailable_reason

    device = torch.device(device)
    setting = eigh_setting()
    impl = default_eigh_impl(device) if setting is EighImpl.AUTO else setting
    if impl is EighImpl.TORCH or device.type != "cuda":
        return torch.linalg.eigh
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"{EIGH_ENV}=cusolver_batched: {reason}")
    return syev_batched


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
def forced(*, svd=None, conv=None, eigh=None):
    """Runs the block with ``TRP_SVD_IMPL`` = ``svd``, ``TRP_CONV_IMPL`` = ``conv`` and
    ``TRP_EIGH_IMPL`` = ``eigh`` (an enum member or its value; ``"auto"``: the default policy;
    None: left as it is), then restores the previous settings. Sets the process environment, so
    it is not thread-local."""
    changes = {}
    if svd is not None:
        changes[SVD_ENV] = _choice(SvdImpl, svd, "svd").value
    if conv is not None:
        changes[CONV_ENV] = _choice(ConvImpl, conv, "conv").value
    if eigh is not None:
        changes[EIGH_ENV] = _choice(EighImpl, eigh, "eigh").value
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
    ops.set_fused_conv_in_auto(FUSED_CONV_VALIDATED_BY is not None)


# -- the measured conv choices, kept across processes -----------------------------------------

CONV_CHOICES_ENV = "TRP_CONV_CHOICES"


def default_conv_choice_file() -> str:
    """Where the conv choices of this build are kept unless ``TRP_CONV_CHOICES`` says otherwise:
    ``$XDG_CACHE_HOME/trp_kernels/`` (``~/.cache/trp_kernels/`` without it), in a file whose name
    carries a digest of the library version, its compiled extension (size and modification
    time: every rebuild starts a new file) and torch's version and CUDA version. The device and
    the cuDNN version are in every line's key, so one file serves several devices."""
    from trp_kernels import __version__
    from trp_kernels import _C

    stat = os.stat(_C.__file__)
    build = "|".join(map(str, (__version__, stat.st_size, stat.st_mtime_ns, torch.__version__,
                               torch.version.cuda)))
    digest = hashlib.sha256(build.encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "trp_kernels", f"conv-choices-{digest}.tsv")


def conv_choice_file_setting() -> str | None:
    """The file ``TRP_CONV_CHOICES`` names now: unset or empty, ``default_conv_choice_file()``;
    ``off``, none (choices last as long as the process); anything else, that path."""
    value = os.environ.get(CONV_CHOICES_ENV, "")
    if value == "off":
        return None
    return value or default_conv_choice_file()


def set_conv_choice_file(path: str | os.PathLike | None) -> None:
    """Keeps the conv choices in ``path`` from now on (read when a problem is first met, a line
    appended per new choice); None keeps them in memory only. Choices already made in this
    process stay."""
    ops.set_conv_choice_file(None if path is None else os.fspath(path))


def apply_conv_choice_file() -> None:
    """``set_conv_choice_file(conv_choice_file_setting())``: called once at import
    (library.py); call it again after changing ``TRP_CONV_CHOICES``."""
    set_conv_choice_file(conv_choice_file_setting())


class ConvChoice(NamedTuple):
    """One measured choice: where it came from (``measured`` in this process, or read from the
    ``file``), the problem (device, cuDNN version, direction, dtype, layout, scheme, sizes,
    geometry, flags), the implementation chosen, and what the measurement saw (rounds, holds
    the host outran, each candidate's median device and host ms and launches)."""

    origin: str
    key: str
    impl: str
    details: str

    @property
    def backward(self) -> bool:
        """Whether this is a choice for the backward (the first field of the problem)."""
        return self.key.rsplit(";", 1)[-1].split(",")[0] != "0"


def conv_choices() -> list[ConvChoice]:
    """The conv choices this process knows, one per problem, in the order first met."""
    return [ConvChoice(*record.split("\t", 3)) for record in ops.conv_choice_records()]


def clear_conv_choices(remove_file: bool = False) -> None:
    """Forgets this process's conv choices, so the next call of each problem looks again: in
    the file, which is read again, or -- with ``remove_file`` -- nowhere, the file deleted, so
    that every problem is measured anew. ``rm -r ~/.cache/trp_kernels`` does the same for
    every build."""
    ops.clear_conv_choices(remove_file)


FUSED_KERNEL = "lowrank_conv2d_fused_kernel"   # in the name of every fused-conv CUDA kernel


HOLD_KERNEL = "device_hold_kernel"   # the kernel that holds the device while auto measures


def fused_launches(fn, kernel: str = FUSED_KERNEL):
    """``(fn(), n)``: fn's result and how many CUDA kernels with ``kernel`` in their name (by
    default the fused conv's) it launched, counted by torch.profiler (CUPTI). Shows which
    implementation a call really ran, or (``HOLD_KERNEL``) whether it measured."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    count = sum(kernel in e.name for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA)
    return result, count
