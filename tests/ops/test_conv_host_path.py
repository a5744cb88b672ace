"""The host path of tk.lowrank_conv2d (docs/cuda_conv.md, "Host cost per call"): an eager call
with plain arguments runs no Python beyond the wrapper, in the forward or in the backward (the
autograd formula is C++); arguments that are not plain -- tensor subclasses with
__torch_function__, a torch function mode, numbers that are not ints, tensors on several
devices -- take the checked torch.ops path, with the same results and the same errors. Timing
is bench/bench_conv_host.py's."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import trp_kernels as tk
import trp_kernels._C as extension
from conv_inputs import conv_inputs, relative_error
from trp_kernels.ops.conv import reference_lowrank_conv2d

PACKAGE = os.path.dirname(tk.__file__)
TORCH = os.path.dirname(torch.__file__)


def python_calls(fn):
    """(fn(), the Python functions that ran inside fn, as (file, name) pairs)."""
    seen = []

    def profile(frame, event, arg):
        if event == "call":
            seen.append((frame.f_code.co_filename, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return result, seen


def inside(path, calls):
    return [c for c in calls if c[0].startswith(path)]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_forward_runs_only_the_wrapper(scheme):
    x, w1, w2, b = conv_inputs("cpu", scheme, requires_grad=True)
    y, calls = python_calls(lambda: tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, scheme))
    # the wrapper, and torch.compiler.is_compiling (a flag read, which asks
    # torch.jit.is_scripting); nothing of torch.ops or of torch.library's Python autograd
    assert [name for _, name in inside(PACKAGE, calls)] == ["lowrank_conv2d"]
    assert [name for _, name in inside(TORCH, calls)] == ["is_compiling", "is_scripting"]
    assert y.grad_fn is not None and "LowRankConv2dFunction" in y.grad_fn.name()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_backward_runs_no_python_of_ours(scheme):
    x, w1, w2, b = conv_inputs("cpu", scheme, requires_grad=True)
    y = tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, scheme)
    grad_y = torch.randn_like(y)
    grads, calls = python_calls(lambda: torch.autograd.grad(y, (x, w1, w2, b), grad_y))
    assert not inside(PACKAGE, calls)
    assert not [c for c in calls if "_library" in c[0] or c[0].endswith("_ops.py")]
    ref = reference_lowrank_conv2d(x, w1, w2, b, 1, 1, 1, scheme)
    for got, want in zip(grads, torch.autograd.grad(ref, (x, w1, w2, b), grad_y)):
        assert relative_error(got, want) < 1e-12


def test_masked_gradients_without_bias():
    # needs_input_grad counts tensor inputs only: with no bias, weight2's is the third
    x, w1, w2, _ = conv_inputs("cpu", "channel")
    w2.requires_grad_(True)
    y = tk.lowrank_conv2d(x, w1, w2, None, 1, 1, 1, "channel")
    (g,) = torch.autograd.grad(y.sum(), w2)
    ref = reference_lowrank_conv2d(x, w1, w2, None, 1, 1, 1, "channel")
    assert relative_error(g, torch.autograd.grad(ref.sum(), w2)[0]) < 1e-12


def test_no_graph_without_grad():
    x, w1, w2, b = conv_inputs("cpu", "channel", requires_grad=True)
    with torch.no_grad():
        assert tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel").grad_fn is None
    plain = [t.detach() for t in (x, w1, w2, b)]
    assert tk.lowrank_conv2d(*plain, 1, 1, 1, "channel").grad_fn is None


def test_direct_call_declines_what_is_not_plain():
    x, w1, w2, b = conv_inputs("cpu", "channel")
    direct = extension.lowrank_conv2d
    y = direct(x, w1, w2, b, 1, (1, 1), [1, 1], "channel")
    assert relative_error(y, reference_lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")) < 1e-12
    assert direct(x, torch.nn.Parameter(w1), w2, None, 1, 1, 1, "channel") is not NotImplemented
    for args in ((x, w1, w2, b, np.int64(1), 1, 1, "channel"),   # not an int
                 (x, w1, w2, b, True, 1, 1, "channel"),          # a bool
                 (x, w1, w2, b, (1, 1, 1), 1, 1, "channel"),     # not a pair
                 (x, w1, w2, b, 2**70, 1, 1, "channel"),         # past int64
                 (x, w1, w2, b, 1, 1, 1, b"channel"),            # not a str
                 (x, 3, w2, b, 1, 1, 1, "channel"),              # not a tensor
                 (x, w1, w2, b.to("meta"), 1, 1, 1, "channel"),  # another device
                 (x, w1, w2, b, 1, 1, 1)):                       # too few
        assert direct(*args) is NotImplemented


def test_arguments_that_are_not_plain_take_the_checked_path():
    x, w1, w2, b = conv_inputs("cpu", "spatial")
    want = reference_lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "spatial")
    got = tk.lowrank_conv2d(x, w1, w2, b, np.int64(1), (np.int32(1), 1), 1, "spatial")
    assert relative_error(got, want) < 1e-12
    with pytest.raises(TypeError, match="stride"):
        tk.lowrank_conv2d(x, w1, w2, b, True, 1, 1, "spatial")
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        tk.lowrank_conv2d(x, w1, w2, b.to("meta"), 1, 1, 1, "spatial")


class Logged(torch.Tensor):
    """A tensor subclass that notes every torch function called on it."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_torch_function_subclass_and_mode_are_honoured():
    x, w1, w2, b = conv_inputs("cpu", "channel")
    Logged.calls = []
    y = tk.lowrank_conv2d(x.as_subclass(Logged), w1, w2, b, 1, 1, 1, "channel")
    assert torch.ops.trp.lowrank_conv2d in Logged.calls and isinstance(y, Logged)

    class Mode(torch.overrides.TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    with Mode():
        tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")
    assert torch.ops.trp.lowrank_conv2d in Mode.seen
