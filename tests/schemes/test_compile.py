"""torch.compile and torch.export of a model with LowRankConv2d layers and of the SVD ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trp_kernels as tk

from testing import devices


def small_model(device):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        tk.LowRankConv2d(8, 16, 3, rank=4, stride=2, padding=1, scheme="channel"),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        tk.LowRankConv2d(16, 16, 3, rank=6, padding=1, scheme="spatial"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).to(device)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("make_model,backend", [("small_model", "inductor"),
                                                ("new_formats_model", "aot_eager")])
def test_compile_forward_and_backward(device, make_model, backend):
    model = globals()[make_model](device)
    x = torch.randn(4, 3, 12, 12, device=device)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)   # fails on a graph break
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", devices)
def test_compile_dynamic_batch(device):
    model = small_model(device).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for batch in (1, 3, 5):
        x = torch.randn(batch, 3, 10, 10, device=device)
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("make_model", ["small_model", "new_formats_model"])
def test_export(device, make_model):
    model = globals()[make_model](device).eval()
    x = torch.randn(2, 3, 12, 12, device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    if make_model == "small_model":   # the matrix schemes run the library's op
        assert "trp.lowrank_conv2d.default" in targets
    for b in (2, 7):
        xb = torch.randn(b, 3, 12, 12, device=device)
        torch.testing.assert_close(exported.module()(xb), model(xb))


@pytest.mark.parametrize("device", devices)
def test_svd_ops_under_compile(device):
    def project(W):
        low, sub, rank = tk.lowrank_project(W, energy=0.9, check_finite=False)
        return low + 1e-3 * sub, rank

    W = torch.randn(3, 16, 40, device=device)
    compiled = torch.compile(project, fullgraph=True, backend="aot_eager")
    low, rank = compiled(W)
    ref_low, ref_rank = project(W)
    torch.testing.assert_close(low, ref_low)
    assert torch.equal(rank, ref_rank)


def new_formats_model(device):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        tk.LowRankConv2d(8, 16, (3, 5), rank=(4, 6), stride=2, padding=(1, 2), scheme="tucker2"),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        tk.LowRankConv2d(16, 16, 3, rank=3, padding=2, dilation=2, bias=False,
                         scheme="decoupled"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).to(device)
