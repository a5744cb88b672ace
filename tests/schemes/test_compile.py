"""torch.compile and torch.export of a model with LowRankConv2d layers, in every scheme."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trp_kernels as tk
from scheme_cases import every_scheme
from testing import devices


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles the same nn.Sequential.forward anew: without a reset its guards pile
    up across the schemes until dynamo's recompile limit refuses (a fullgraph error)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_model(case, device):
    """Two layers of the scheme: a stride-2 3x5 one, and a dilated one without bias (1x1 in
    scheme pointwise)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        tk.LowRankConv2d(8, 16, case.kernel((3, 5)), rank=case.rank, stride=2, padding=(1, 2),
                         scheme=case.name),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        tk.LowRankConv2d(16, 16, case.kernel(3), rank=case.rank, padding=2, dilation=2,
                         bias=False, scheme=case.name),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).to(device)


@every_scheme
@pytest.mark.parametrize("device", devices)
def test_compile_forward_and_backward(case, device):
    model = small_model(case, device)
    x = torch.randn(4, 3, 12, 12, device=device)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # inductor where the library's op runs (it must lower it), aot_eager for ATen convs
    backend = "inductor" if case.scheme.fused_op else "aot_eager"
    compiled = torch.compile(model, fullgraph=True, backend=backend)   # fails on a graph break
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@every_scheme
@pytest.mark.parametrize("device", devices)
def test_compile_dynamic_batch(case, device):
    model = small_model(case, device).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for batch in (1, 3, 5):
        x = torch.randn(batch, 3, 10, 10, device=device)
        torch.testing.assert_close(compiled(x), model(x))


@every_scheme
@pytest.mark.parametrize("device", devices)
def test_export(case, device):
    model = small_model(case, device).eval()
    x = torch.randn(2, 3, 12, 12, device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    # the schemes of the fused op run it; the others are ATen convolutions
    assert ("trp.lowrank_conv2d.default" in targets) == case.scheme.fused_op
    for b in (2, 7):
        xb = torch.randn(b, 3, 12, 12, device=device)
        torch.testing.assert_close(exported.module()(xb), model(xb))
