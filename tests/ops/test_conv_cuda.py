"""CUDA only: every implementation of trp::lowrank_conv2d against a float64 reference (float32
1e-4 relative, float16 and bfloat16 1e-2), the fused kernel's awkward cases (odd strides,
dilations and paddings, channel counts off the tile sizes, several rank passes and column tiles,
misaligned and non-contiguous inputs), opcheck, which kernel ran, and the measured selection
with its cache. Marked ``cuda``: skipped without a GPU; all but the CUDA-graph checks also run on
the emulated CUDA device (tests/emulated_cuda.py)."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from conv_inputs import CUDA_IMPLS, SCHEMES, conv_inputs, gradcheck, relative_error
from testing import cuda_only, fused_conv_launches
from trp_kernels.ops import backends, memory_format_of, ops
from trp_kernels.ops.conv import reference_lowrank_conv2d


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# (C, N, rank, H, W, kernel, stride, padding, dilation)
CASES = [
    (16, 16, 5, 8, 8, 3, 1, 1, 1),  # a ResNet-20 layer
    (24, 40, 20, 9, 11, 3, 2, 1, 1),  # C, N off the tile sizes; stride 2
    (12, 9, 7, 10, 13, (3, 2), (2, 1), (2, 0), (2, 3)),
    (10, 33, 9, 11, 12, (5, 3), (1, 2), (0, 3), (2, 3)),
    (8, 70, 80, 7, 9, 3, 1, 1, 1),  # rank > 64 (two first-GEMM passes), N > 64
    (5, 6, 3, 3, 150, 3, 1, 1, 1),  # wide rows: several column tiles
    (3, 1, 1, 4, 4, 1, 1, 0, 1),  # 1x1, one channel out
]


def case_id(case):
    C, N, r, H, W, k, s, p, d = case
    return f"C{C}N{N}r{r}-{H}x{W}-k{k}s{s}p{p}d{d}".replace(" ", "")


def case_inputs(device, case, scheme, dtype, channels_last=False, requires_grad=False, seed=0):
    """conv_inputs for one of CASES, weights halved."""
    C, N, rank, H, W, kernel, *_ = case
    return conv_inputs(device, scheme, C, N, rank, kernel, (H, W), dtype=dtype,
                       channels_last=channels_last, requires_grad=requires_grad, seed=seed,
                       scale=0.5)


def geometry(case):
    return case[6], case[7], case[8]


def float64_reference(inputs, case, scheme):
    """The reference on the CPU in float64, from the same (rounded) inputs."""
    cpu = [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in inputs]
    return cpu, reference_lowrank_conv2d(*cpu, *geometry(case), scheme)




def float64_comparison(cases):
    """The parametrization of the float64 comparisons, CUDA only: ``cases`` x layout x dtype x
    scheme x implementation."""
    marks = [pytest.mark.parametrize("case", cases, ids=case_id),
             pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"]),
             pytest.mark.parametrize("dtype", DTYPES, ids=str),
             pytest.mark.parametrize("scheme", SCHEMES),
             pytest.mark.parametrize("impl", CUDA_IMPLS),
             pytest.mark.parametrize("device", cuda_only())]

    def parametrized(test):
        for mark in reversed(marks):
            test = mark(test)
        return test
    return parametrized


def fused_launches(device, fn):
    return fused_conv_launches(device, fn)[1]


@float64_comparison(CASES)
def test_forward_matches_float64(device, impl, scheme, dtype, channels_last, case):
    inputs = case_inputs(device, case, scheme, dtype, channels_last)
    with backends.forced(conv=impl):
        y, fused = fused_conv_launches(device,
                                       lambda: tk.lowrank_conv2d(*inputs, *geometry(case), scheme))
    assert fused == (impl == "fused")  # every case here is one the fused kernel takes
    _, ref = float64_reference(inputs, case, scheme)
    assert y.dtype == dtype and y.shape == ref.shape
    assert y.is_contiguous(memory_format=memory_format_of(inputs[0]))
    assert torch.isfinite(y).all()
    assert relative_error(y, ref) < TOLERANCE[dtype]


@float64_comparison(CASES[:5])
def test_gradients_match_float64(device, impl, scheme, dtype, channels_last, case):
    inputs = case_inputs(device, case, scheme, dtype, channels_last, requires_grad=True)
    with backends.forced(conv=impl):
        y = tk.lowrank_conv2d(*inputs, *geometry(case), scheme)
        grad_y = torch.randn_like(y)
        grads = torch.autograd.grad(y, inputs, grad_y)
    cpu, ref = float64_reference(inputs, case, scheme)
    ref_grads = torch.autograd.grad(ref, cpu, grad_y.double().cpu())
    for name, got, want, t in zip(("x", "weight1", "weight2", "bias"), grads, ref_grads, inputs):
        assert got.is_contiguous(memory_format=memory_format_of(t)), name
        assert relative_error(got, want) < TOLERANCE[dtype], name


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("device", cuda_only())
def test_gradcheck_float64(device, impl, scheme):
    # float64 has no fused kernel: `fused` runs two_convs, which this also checks.
    case = (3, 4, 2, 6, 5, (3, 2), (2, 1), (1, 1), (1, 2))
    inputs = case_inputs(device, case, scheme, torch.float64, requires_grad=True)
    with backends.forced(conv=impl):
        assert gradcheck(
            lambda *a: tk.lowrank_conv2d(*a, *geometry(case), scheme), inputs)


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.bfloat16, True)],
                         ids=["float32-nchw", "bfloat16-cl"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("impl", CUDA_IMPLS + ["auto"])
@pytest.mark.parametrize("device", cuda_only(emulated=False))  # opcheck: CPU, CUDA and XPU only
def test_opcheck(device, impl, scheme, dtype, channels_last):
    case = CASES[1]
    x, w1, w2, bias = case_inputs(device, case, scheme, dtype, channels_last, requires_grad=True)
    args = [list(v) if isinstance(v, tuple) else [v, v] for v in geometry(case)]
    # auto: the eager and the compiled call are one problem with one choice, though the
    # compiled backward may get grad_out in another layout (the backward runs it in x's), so
    # they agree as exactly as under a forced implementation. (On the H200 they once ran
    # different implementations, whose bf16 roundings differ by 13% at an element.)
    with backends.forced(conv=impl):
        torch.library.opcheck(ops.lowrank_conv2d, (x, w1, w2, bias, *args, scheme))
        grad_y = torch.randn_like(ops.lowrank_conv2d(x, w1, w2, bias, *args, scheme)).detach()
        for mask in ([True] * 4, [True, False, True, False]):
            torch.library.opcheck(ops.lowrank_conv2d_backward,
                                  (grad_y, x.detach(), w1.detach(), w2.detach(), *args, scheme,
                                   mask))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("device", cuda_only())
def test_forcing_switches_the_kernel_per_call(device, scheme, dtype, channels_last):
    inputs = case_inputs(device, CASES[0], scheme, dtype, channels_last)
    run = lambda: tk.lowrank_conv2d(*inputs, *geometry(CASES[0]), scheme)  # noqa: E731
    with backends.forced(conv="fused"):
        assert fused_launches(device, run) == 1
    with backends.forced(conv="two_convs"):
        assert fused_launches(device, run) == 0
    with backends.forced(conv="dense"):
        assert fused_launches(device, run) == 0


@pytest.mark.parametrize("dtype, rank", [(torch.float64, 5), (torch.float32, 4000)],
                         ids=["float64", "rank-past-shared-memory"])
@pytest.mark.parametrize("device", cuda_only())
def test_fused_falls_back_where_the_kernel_cannot_run(device, dtype, rank):
    # (rank 0, the other case the kernel does not take, is test_rank_zero_is_the_bias's)
    case = (16, 24, rank, 8, 8, 3, 1, 1, 1)
    inputs = case_inputs(device, case, "channel", dtype)
    with backends.forced(conv="fused"):
        run = lambda: tk.lowrank_conv2d(*inputs, *geometry(case), "channel")  # noqa: E731
        assert fused_launches(device, run) == 0
        y = run()
    _, ref = float64_reference(inputs, case, "channel")
    assert relative_error(y, ref) < 1e-4


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_fused_misaligned_channels_last_input(device, scheme, dtype):
    # The 16-byte vector loads of channels_last rows need an aligned base; this one is not.
    case = CASES[0]
    x, w1, w2, bias = case_inputs(device, case, scheme, dtype, channels_last=True)
    storage = torch.empty(x.numel() + 1, device=device, dtype=dtype)
    shifted = storage[1:].as_strided(x.shape, x.stride())
    shifted.copy_(x)
    assert shifted.data_ptr() % 16 != 0 and memory_format_of(shifted) == torch.channels_last
    with backends.forced(conv="fused"):
        run = lambda: tk.lowrank_conv2d(shifted, w1, w2, bias, 1, 1, 1, scheme)  # noqa: E731
        assert fused_launches(device, run) == 1
        y = tk.lowrank_conv2d(shifted, w1, w2, bias, 1, 1, 1, scheme)
    _, ref = float64_reference([x, w1, w2, bias], case, scheme)
    assert relative_error(y, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("device", cuda_only())
def test_non_contiguous_input_and_weights(device, impl):
    case = CASES[1]
    x, w1, w2, bias = case_inputs(device, case, "spatial", torch.float32)
    wide = torch.randn(2, case[0], case[3], 2 * case[4], device=device)
    wide[..., ::2] = x
    x_view = wide[..., ::2]
    w1_view = w1.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    with backends.forced(conv=impl):
        y = tk.lowrank_conv2d(x_view, w1_view, w2, bias, *geometry(case), "spatial")
    _, ref = float64_reference([x, w1, w2, bias], case, "spatial")
    assert relative_error(y, ref) < 1e-4


def unique_case(salt):
    """A shape no other test uses, so the selection cache has no entry for it yet."""
    return (16 + salt, 20, 6, 9, 10 + salt, 3, 1, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", cuda_only())
def test_auto_measures_once_then_reuses_its_choice(device, dtype):
    case = unique_case(DTYPES.index(dtype))
    inputs = case_inputs(device, case, "channel", dtype)
    run = lambda: tk.lowrank_conv2d(*inputs, *geometry(case), "channel")  # noqa: E731
    with backends.forced(conv="auto"):
        first = fused_launches(device, run)  # times the candidates, then runs the choice
        second = fused_launches(device, run)
        third = fused_launches(device, run)
        y1, y2 = run(), run()
    # No exact launch count for the measuring call (how often each candidate is timed, and
    # whether fused is a candidate at all, are the selection's business): the choice is made
    # once, so every later call launches the fused kernel once or never, always the same.
    assert second in (0, 1) and third == second
    assert first >= second
    if not torch.ops.trp.fused_conv_in_auto():  # unvalidated: never a candidate, never chosen
        assert first == second == 0
    assert torch.equal(y1, y2)
    outputs = {}
    for impl in CUDA_IMPLS:
        with backends.forced(conv=impl):
            outputs[impl] = run()
    # The choice's output is one of the implementations' (two of them may agree bit for bit, as
    # fused and two_convs do in float16 on the emulated device).
    chosen = [impl for impl, y in outputs.items() if torch.equal(y, y1)]
    assert "fused" in chosen if second == 1 else any(impl != "fused" for impl in chosen)


@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_auto_under_graph_capture_uses_the_default_without_timing(device):
    case = unique_case(7)
    x, w1, w2, bias = case_inputs(device, case, "spatial", torch.bfloat16)
    args = (*geometry(case), "spatial")
    stream = torch.cuda.Stream()
    # Warm up outside the capture, on the capturing stream, as torch.cuda.graph expects: cuDNN's
    # plans and workspaces for these shapes exist before capture. Forced, so that the automatic
    # choice stays unmeasured for this problem.
    stream.wait_stream(torch.cuda.current_stream())
    with backends.forced(conv="two_convs"), torch.cuda.stream(stream):
        tk.lowrank_conv2d(x, w1, w2, bias, *args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with backends.forced(conv="auto"):
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                captured = tk.lowrank_conv2d(x, w1, w2, bias, *args)
        graph.replay()
        torch.cuda.synchronize()
    with backends.forced(conv="two_convs"):  # the default while capturing with nothing cached
        eager = tk.lowrank_conv2d(x, w1, w2, bias, *args)
    assert torch.equal(captured, eager)
    x.add_(1.0)
    graph.replay()
    with backends.forced(conv="two_convs"):
        assert torch.equal(captured, tk.lowrank_conv2d(x, w1, w2, bias, *args))


@pytest.mark.parametrize("device", cuda_only(emulated=False))
def test_backward_under_graph_capture_after_measuring(device):
    case = unique_case(8)
    inputs = case_inputs(device, case, "channel", torch.float16, requires_grad=True)
    args = (*geometry(case), "channel")
    grad_y = torch.randn_like(tk.lowrank_conv2d(*inputs, *args))
    with backends.forced(conv="auto"):
        eager = torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)  # measures
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on the capturing stream, outside the capture
            torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                captured = torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)
        graph.replay()
        torch.cuda.synchronize()
    # The same implementation both times, but cuDNN may pick a nondeterministic backward
    # algorithm (atomics in the weight gradient): equal up to float16 rounding, not bitwise.
    for got, want in zip(captured, eager):
        assert relative_error(got, want) <= TOLERANCE[torch.float16] / 10
