"""Which implementation ``trp.lowrank_conv2d`` runs.

On CUDA the op has three: ``fused`` (one kernel for both convolutions, the intermediate kept on
chip; float32/float16/bfloat16 on sm_80 and newer), ``two_convs`` (two cuDNN convolutions) and
``dense`` (the full weight rebuilt from the factors, one cuDNN convolution). By default the
first call with a new problem (shapes, dtype, layout, device, geometry; forward and backward
separately) times every candidate once and remembers the fastest for the rest of the process;
a candidate that fails on that problem (unsupported, out of memory) is skipped with a warning,
and the call fails only if every candidate does. No timing happens during CUDA-graph capture
(a remembered choice or ``two_convs`` is used). The CPU runs ``two_convs`` unless ``dense`` is
forced. The backward of ``fused`` is the ``two_convs`` backward.

The fused kernel has not yet passed its CUDA tests on a GPU, so the automatic choice leaves it
out: it chooses between ``two_convs`` and ``dense`` only, and ``fused`` runs only when forced.
``trp_kernels/validation.py`` records the validation (``FUSED_CONV_VALIDATED_BY``, the committed
result file, None until then); at import the package passes it to the C++ choice with
:func:`apply_validation` (the op ``trp::set_fused_conv_in_auto``; ``trp::fused_conv_in_auto``
reads it back).

The environment variable ``TRP_CONV_IMPL`` (``auto``, ``fused``, ``two_convs``, ``dense``)
forces one; the op reads it on every call. ``fused`` where the kernel cannot run (float64,
rank 0, older GPUs, shapes whose tiles do not fit shared memory) runs ``two_convs``.
"""

from __future__ import annotations

import torch

from . import impl_switch, validation

ENV = "TRP_CONV_IMPL"
IMPLS = ("fused", "two_convs", "dense")


def forced_impl() -> str | None:
    """The implementation ``TRP_CONV_IMPL`` forces now, or None for the default choice."""
    return impl_switch.read(ENV, IMPLS)


def forced(impl: str | None):
    """Runs the block with ``impl`` forced (None or ``"auto"``: the default choice), then
    restores the previous setting. Sets the process environment, so it is not thread-local."""
    return impl_switch.forced(ENV, IMPLS, impl)


def apply_validation() -> None:
    """Lets the automatic choice on CUDA pick ``fused`` exactly when validation.py records a
    GPU run that validated it. Called once at import (trp_kernels/_ops.py)."""
    torch.ops.trp.set_fused_conv_in_auto(validation.FUSED_CONV_VALIDATED_BY is not None)


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
