"""Which implementation ``truncated_svd``, ``lowrank_project`` and ``lowrank_project_groups``
(trp_kernels/svd.py) run.

Two paths compute the same contract:
  ``jacobi``  the compiled op ``torch.ops.trp.*``: LAPACK kernels on the CPU (csrc/cpu), the
              fused / blocked Jacobi kernels on CUDA (csrc/cuda, docs/cuda_svd.md);
  ``eigh``    the composite path (svd_composite.py): float64 Gram matrix of the short side and
              ``torch.linalg.eigh``, plain torch calls that run on any device, CPU included.
Default: the compiled op on the CPU; on CUDA the composite path until the Jacobi kernels' CUDA
tests have passed on real hardware (``validation.CUDA_SVD_VALIDATED_BY`` names the committed
result file that shows it), then the compiled op; the composite path on every other device.

The environment variable ``TRP_SVD_IMPL`` (``jacobi``, ``eigh``; empty or ``auto`` for the
default) forces one and is read on every call; any other value raises ValueError.
"""

from __future__ import annotations

import torch

from . import impl_switch, validation

ENV = "TRP_SVD_IMPL"
IMPLS = ("jacobi", "eigh")


def forced_impl() -> str | None:
    """The implementation ``TRP_SVD_IMPL`` forces now, or None for the default choice."""
    return impl_switch.read(ENV, IMPLS)


def default_impl(device: torch.device) -> str:
    """The path used on ``device`` when nothing is forced."""
    if device.type == "cpu":
        return "jacobi"
    if device.type == "cuda" and validation.CUDA_SVD_VALIDATED_BY is not None:
        return "jacobi"
    return "eigh"


def impl_for(device: torch.device) -> str:
    """The path the SVD functions take now for tensors on ``device``."""
    return forced_impl() or default_impl(torch.device(device))


def forced(impl: str | None):
    """Runs the block with ``impl`` forced (None or ``"auto"``: the default choice), then
    restores the previous setting. Sets the process environment, so it is not thread-local."""
    return impl_switch.forced(ENV, IMPLS, impl)
