"""CUDA-only checks of trp::lowrank_conv2d (issue 5): every implementation, forced through
TRP_CONV_IMPL, against a float64 reference (float32 1e-4 relative, float16/bfloat16 1e-2), the
fused kernel's awkward cases (odd strides, dilations and paddings, channel counts off the tile
sizes, several rank passes and column tiles, misaligned and non-contiguous inputs), gradients,
gradcheck in float64, opcheck, and the measured selection with its cache. Skipped without
CUDA; the device-agnostic checks are in test_conv_paths.py."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import trp_kernels as tk
from trp_kernels import conv_select, factorization
from trp_kernels._ops import memory_format_of, ops
from trp_kernels.conv import reference_lowrank_conv2d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

IMPLS = ["fused", "two_convs", "dense"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FUSED_KERNEL = "lowrank_conv2d_fused_kernel"

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


@pytest.fixture(autouse=True)
def exact_float32():
    # cuDNN (two_convs, dense) and the fused kernel compute float32 convolutions in tf32 while
    # torch.backends.cudnn.allow_tf32 is set, the default (~1e-3 relative error). The 1e-4
    # float32 contract is for allow_tf32 off, where the fused kernel uses 3xTF32.
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def make_inputs(case, scheme, dtype, channels_last=False, requires_grad=False, seed=0):
    C, N, rank, H, W, kernel, *_ = case
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape1, shape2 = factorization.factor_shapes((N, C, *kernel), rank, scheme)
    x = torch.randn(2, C, H, W, device="cuda", generator=g).to(dtype)
    w1 = (torch.randn(shape1, device="cuda", generator=g) * 0.5).to(dtype)
    w2 = (torch.randn(shape2, device="cuda", generator=g) * 0.5).to(dtype)
    bias = torch.randn(N, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [t.requires_grad_(requires_grad) for t in (x, w1, w2, bias)]


def geometry(case):
    return case[6], case[7], case[8]


def float64_reference(inputs, case, scheme):
    """The reference on the CPU in float64, from the same (rounded) inputs."""
    cpu = [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in inputs]
    return cpu, reference_lowrank_conv2d(*cpu, *geometry(case), scheme)


def relative_error(got, want):
    got = got.detach().double().cpu()
    return ((got - want.detach()).norm() / want.detach().norm().clamp_min(1e-300)).item()


def profiled(fn):
    """fn's result and the number of fused-kernel launches it made."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    launches = sum(FUSED_KERNEL in e.name for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    return result, launches


def fused_launches(fn):
    return profiled(fn)[1]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_float64(impl, scheme, dtype, channels_last, case):
    inputs = make_inputs(case, scheme, dtype, channels_last)
    with conv_select.forced(impl):
        y, fused = profiled(lambda: tk.lowrank_conv2d(*inputs, *geometry(case), scheme))
    assert fused == (impl == "fused")  # every case here is one the fused kernel takes
    _, ref = float64_reference(inputs, case, scheme)
    assert y.dtype == dtype and y.shape == ref.shape
    assert y.is_contiguous(memory_format=memory_format_of(inputs[0]))
    assert torch.isfinite(y).all()
    assert relative_error(y, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("case", CASES[:5], ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_float64(impl, scheme, dtype, channels_last, case):
    inputs = make_inputs(case, scheme, dtype, channels_last, requires_grad=True)
    with conv_select.forced(impl):
        y = tk.lowrank_conv2d(*inputs, *geometry(case), scheme)
        grad_y = torch.randn_like(y)
        grads = torch.autograd.grad(y, inputs, grad_y)
    cpu, ref = float64_reference(inputs, case, scheme)
    ref_grads = torch.autograd.grad(ref, cpu, grad_y.double().cpu())
    for name, got, want, t in zip(("x", "weight1", "weight2", "bias"), grads, ref_grads, inputs):
        assert got.is_contiguous(memory_format=memory_format_of(t)), name
        assert relative_error(got, want) < TOLERANCE[dtype], name


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_float64(impl, scheme):
    # float64 has no fused kernel: `fused` runs two_convs, which this also checks.
    case = (3, 4, 2, 6, 5, (3, 2), (2, 1), (1, 1), (1, 2))
    inputs = make_inputs(case, scheme, torch.float64, requires_grad=True)
    with conv_select.forced(impl):
        assert torch.autograd.gradcheck(
            lambda *a: tk.lowrank_conv2d(*a, *geometry(case), scheme), inputs)


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.bfloat16, True)],
                         ids=["float32-nchw", "bfloat16-cl"])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("impl", IMPLS + ["auto"])
def test_opcheck(impl, scheme, dtype, channels_last):
    case = CASES[1]
    x, w1, w2, bias = make_inputs(case, scheme, dtype, channels_last, requires_grad=True)
    args = [list(v) if isinstance(v, tuple) else [v, v] for v in geometry(case)]
    with conv_select.forced(impl):
        torch.library.opcheck(ops.lowrank_conv2d, (x, w1, w2, bias, *args, scheme))
        grad_y = torch.randn_like(ops.lowrank_conv2d(x, w1, w2, bias, *args, scheme)).detach()
        for mask in ([True] * 4, [True, False, True, False]):
            torch.library.opcheck(ops.lowrank_conv2d_backward,
                                  (grad_y, x.detach(), w1.detach(), w2.detach(), *args, scheme,
                                   mask))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_forcing_switches_the_kernel_per_call(scheme, dtype, channels_last):
    inputs = make_inputs(CASES[0], scheme, dtype, channels_last)
    run = lambda: tk.lowrank_conv2d(*inputs, *geometry(CASES[0]), scheme)  # noqa: E731
    with conv_select.forced("fused"):
        assert fused_launches(run) == 1
    with conv_select.forced("two_convs"):
        assert fused_launches(run) == 0
    with conv_select.forced("dense"):
        assert fused_launches(run) == 0


@pytest.mark.parametrize("dtype, rank", [(torch.float64, 5), (torch.float32, 4000)],
                         ids=["float64", "rank-past-shared-memory"])
def test_fused_falls_back_where_the_kernel_cannot_run(dtype, rank):
    # (rank 0, the other case the kernel does not take, is test_rank_zero's)
    case = (16, 24, rank, 8, 8, 3, 1, 1, 1)
    inputs = make_inputs(case, "channel", dtype)
    with conv_select.forced("fused"):
        run = lambda: tk.lowrank_conv2d(*inputs, *geometry(case), "channel")  # noqa: E731
        assert fused_launches(run) == 0
        y = run()
    _, ref = float64_reference(inputs, case, "channel")
    assert relative_error(y, ref) < 1e-4


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_misaligned_channels_last_input(scheme, dtype):
    # The 16-byte vector loads of channels_last rows need an aligned base; this one is not.
    case = CASES[0]
    x, w1, w2, bias = make_inputs(case, scheme, dtype, channels_last=True)
    storage = torch.empty(x.numel() + 1, device="cuda", dtype=dtype)
    shifted = storage[1:].as_strided(x.shape, x.stride())
    shifted.copy_(x)
    assert shifted.data_ptr() % 16 != 0 and memory_format_of(shifted) == torch.channels_last
    with conv_select.forced("fused"):
        assert fused_launches(lambda: tk.lowrank_conv2d(shifted, w1, w2, bias, 1, 1, 1, scheme)) == 1
        y = tk.lowrank_conv2d(shifted, w1, w2, bias, 1, 1, 1, scheme)
    _, ref = float64_reference([x, w1, w2, bias], case, scheme)
    assert relative_error(y, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_input_and_weights(impl):
    case = CASES[1]
    x, w1, w2, bias = make_inputs(case, "spatial", torch.float32)
    wide = torch.randn(2, case[0], case[3], 2 * case[4], device="cuda")
    wide[..., ::2] = x
    x_view = wide[..., ::2]
    w1_view = w1.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    with conv_select.forced(impl):
        y = tk.lowrank_conv2d(x_view, w1_view, w2, bias, *geometry(case), "spatial")
    _, ref = float64_reference([x, w1, w2, bias], case, "spatial")
    assert relative_error(y, ref) < 1e-4


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("impl", IMPLS)
def test_rank_zero(impl, scheme):
    inputs = make_inputs((4, 6, 0, 5, 5, 3, 1, 1, 1), scheme, torch.float32, requires_grad=True)
    with conv_select.forced(impl):
        y = tk.lowrank_conv2d(*inputs, 1, 1, 1, scheme)
        grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
    assert torch.equal(y, inputs[3].detach().view(1, -1, 1, 1).expand_as(y))
    assert torch.equal(grads[0], torch.zeros_like(inputs[0]))
    assert torch.equal(grads[3], torch.full_like(inputs[3], y[:, 0].numel()))


def unique_case(salt):
    """A shape no other test uses, so the selection cache has no entry for it yet."""
    return (16 + salt, 20, 6, 9, 10 + salt, 3, 1, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_measures_once_then_reuses_its_choice(dtype):
    case = unique_case(DTYPES.index(dtype))
    inputs = make_inputs(case, "channel", dtype)
    run = lambda: tk.lowrank_conv2d(*inputs, *geometry(case), "channel")  # noqa: E731
    with conv_select.forced("auto"):
        first = fused_launches(run)  # warm-up + 7 timed runs of each candidate, then the choice
        second = fused_launches(run)
        y1, y2 = run(), run()
    assert second in (0, 1)
    assert first == 1 + 7 + second
    assert torch.equal(y1, y2)
    outputs = {}
    for impl in IMPLS:
        with conv_select.forced(impl):
            outputs[impl] = run()
    chosen = [impl for impl, y in outputs.items() if torch.equal(y, y1)]
    assert chosen and (("fused" in chosen) == (second == 1))


def test_auto_under_graph_capture_uses_the_default_without_timing():
    case = unique_case(7)
    x, w1, w2, bias = make_inputs(case, "spatial", torch.bfloat16)
    args = (*geometry(case), "spatial")
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with conv_select.forced("auto"):
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                captured = tk.lowrank_conv2d(x, w1, w2, bias, *args)
        graph.replay()
        torch.cuda.synchronize()
    with conv_select.forced("fused"):  # the default while capturing: fused where it can run
        eager = tk.lowrank_conv2d(x, w1, w2, bias, *args)
    assert torch.equal(captured, eager)
    x.add_(1.0)
    graph.replay()
    with conv_select.forced("fused"):
        assert torch.equal(captured, tk.lowrank_conv2d(x, w1, w2, bias, *args))


def test_backward_under_graph_capture_after_measuring():
    case = unique_case(8)
    inputs = make_inputs(case, "channel", torch.float16, requires_grad=True)
    args = (*geometry(case), "channel")
    grad_y = torch.randn_like(tk.lowrank_conv2d(*inputs, *args))
    with conv_select.forced("auto"):
        eager = torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)  # measures
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                captured = torch.autograd.grad(tk.lowrank_conv2d(*inputs, *args), inputs, grad_y)
        graph.replay()
        torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        assert torch.equal(got, want)
