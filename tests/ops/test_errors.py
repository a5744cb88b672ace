"""Bad input to the ops raises ValueError or TypeError naming the argument (docs/design.md,
"Errors"), on the public functions and on the raw ops alike; nothing is silently clamped. The
layers' and decompose_model's arguments are checked beside their other tests."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk

ops = torch.ops.trp


@pytest.mark.parametrize("fn", [tk.truncated_svd, tk.lowrank_project])
@pytest.mark.parametrize(
    "kwargs,error,word",
    [
        ({"energy": 0.0}, ValueError, "energy"),
        ({"energy": 1.5}, ValueError, "energy"),
        ({"energy": -0.1}, ValueError, "energy"),
        ({"energy": float("nan")}, ValueError, "energy"),
        ({"threshold": -1.0}, ValueError, "threshold"),
        ({"threshold": float("inf")}, ValueError, "threshold"),
        ({"max_rank": -1}, ValueError, "max_rank"),
        ({"energy": "0.9"}, TypeError, "energy"),
        ({"energy": True}, TypeError, "energy"),
        ({"max_rank": 2.5}, TypeError, "max_rank"),
    ],
)
def test_svd_rule_arguments(fn, kwargs, error, word):
    with pytest.raises(error, match=word):
        fn(torch.randn(5, 6), **kwargs)


@pytest.mark.parametrize("fn", [tk.truncated_svd, tk.lowrank_project])
def test_svd_input(fn):
    with pytest.raises(TypeError, match="W"):
        fn([[1.0, 2.0]])
    with pytest.raises(ValueError, match="W"):
        fn(torch.randn(5))
    with pytest.raises(TypeError, match="W"):
        fn(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="W"):
        fn(torch.randn(4, 4, dtype=torch.bfloat16))
    for bad in (float("nan"), float("inf")):
        W = torch.randn(3, 4, 5)
        W[1, 2, 3] = bad
        with pytest.raises(ValueError, match="non-finite.*matrix 1"):
            fn(W)


def test_raw_ops_check_too():
    with pytest.raises(ValueError, match="energy"):
        ops.truncated_svd(torch.randn(4, 4), 2.0, None, None)
    with pytest.raises(ValueError, match="W"):
        ops.lowrank_project_groups([torch.randn(4, 4), torch.randn(3)], None, None, None)
    W = torch.randn(2, 4, 4)
    W[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"W\[1\].*matrix 0"):
        ops.lowrank_project_groups([torch.randn(4, 4), W], None, None, None)


def conv_inputs(scheme="channel"):
    x = torch.randn(1, 4, 8, 8)
    if scheme == "channel":
        return x, torch.randn(3, 4, 3, 3), torch.randn(5, 3, 1, 1), torch.randn(5)
    return x, torch.randn(3, 4, 3, 1), torch.randn(5, 3, 1, 3), torch.randn(5)


@pytest.mark.parametrize(
    "change,error,word",
    [
        (lambda a: {**a, "x": torch.randn(4, 8, 8)}, ValueError, "x"),
        (lambda a: {**a, "weight1": torch.randn(3, 2, 3, 3)}, ValueError, "groups"),
        (lambda a: {**a, "weight2": torch.randn(5, 2, 1, 1)}, ValueError, "weight2"),
        (lambda a: {**a, "weight2": torch.randn(5, 3, 3, 3)}, ValueError, "weight2"),
        (lambda a: {**a, "bias": torch.randn(4)}, ValueError, "bias"),
        (lambda a: {**a, "weight1": a["weight1"].double()}, TypeError, "weight1"),
        (lambda a: {**a, "x": a["x"].long()}, TypeError, "x"),
        (lambda a: {**a, "stride": 0}, ValueError, "stride"),
        (lambda a: {**a, "padding": -1}, ValueError, "padding"),
        (lambda a: {**a, "dilation": (1, 0)}, ValueError, "dilation"),
        (lambda a: {**a, "stride": (1, 2, 3)}, TypeError, "stride"),
        (lambda a: {**a, "scheme": "diagonal"}, ValueError, "scheme"),
        (lambda a: {**a, "weight1": a["weight1"].to("meta")}, ValueError, "weight1 is on meta"),
        (lambda a: {**a, "x": torch.randn(1, 4, 2, 2)}, ValueError, "smaller than"),
        (lambda a: {**a, "x": "image"}, TypeError, "x"),
    ],
)
def test_conv_arguments(change, error, word):
    x, w1, w2, b = conv_inputs()
    args = change({"x": x, "weight1": w1, "weight2": w2, "bias": b, "stride": 1,
                   "padding": 0, "dilation": 1, "scheme": "channel"})
    with pytest.raises(error, match=word):
        tk.lowrank_conv2d(**args)


def test_spatial_factor_shapes_checked():
    x, w1, w2, b = conv_inputs("spatial")
    with pytest.raises(ValueError, match="spatial scheme: weight1"):
        tk.lowrank_conv2d(x, torch.randn(3, 4, 3, 3), w2, b, scheme="spatial")
    with pytest.raises(ValueError, match="spatial scheme: weight2"):
        tk.lowrank_conv2d(x, w1, torch.randn(5, 3, 3, 3), b, scheme="spatial")


def test_missing_extension_says_how_to_build():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['trp_kernels._C'] = None\n"
        "try:\n    import trp_kernels\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install --no-build-isolation -e ." in out.stdout
