"""bench/layer_sets.json: a faithful copy of the project's shared/layer_sets.json, whose matrix
shapes follow the factorisation of trp_kernels.factorization."""

from __future__ import annotations

import json
import os

import pytest

from trp_kernels import factorization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY = os.path.join(ROOT, "bench", "layer_sets.json")
SHARED = os.path.join(ROOT, "..", "shared", "layer_sets.json")


def test_copy_matches_shared():
    if not os.path.exists(SHARED):
        pytest.skip("no shared/ beside the repository")
    with open(COPY) as a, open(SHARED) as b:
        assert json.load(a) == json.load(b)


def test_matrix_shapes():
    with open(COPY) as f:
        data = json.load(f)
    for network in ("resnet20", "resnet56", "resnet18", "resnet50"):
        assert data[network]
        for layer in data[network]:
            shape = (layer["out_channels"], layer["in_channels"], *layer["kernel"])
            assert tuple(layer["channel_matrix"]) == factorization.matrix_shape(shape, "channel")
            assert tuple(layer["spatial_matrix"]) == factorization.matrix_shape(shape, "spatial")
