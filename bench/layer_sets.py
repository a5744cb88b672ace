"""The decomposable convs of ResNet-20/56 (CIFAR) and ResNet-18/50 (ImageNet), conv by conv.

bench/layer_sets.json lists them with their input size at the usual resolution (CIFAR 32x32,
ImageNet 224x224) and their matrix shape in each scheme; tests/test_bench_data.py checks it
against the library's own models and trp_kernels.schemes.factorization.
"""

from __future__ import annotations

import json
import os

import torch

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layer_sets.json")
NETWORKS = ("resnet20", "resnet56", "resnet18", "resnet50")


def load() -> dict:
    with open(PATH) as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def matrix_shapes(network: str, scheme: str) -> list[tuple[int, int]]:
    """The TRP matrix of every decomposable conv, in forward order."""
    return [tuple(layer[f"{scheme}_matrix"]) for layer in load()[network]]


def weights(network: str, scheme: str, device="cpu", dtype=torch.float32, seed=0):
    """Random matrices (never zeros) of a network's layers, one per layer, in forward order."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype)
            for s in matrix_shapes(network, scheme)]


def groups(matrices):
    """Same-shaped matrices stacked: one tensor per shape, as TRP projects them."""
    by_shape: dict[tuple, list] = {}
    for M in matrices:
        by_shape.setdefault(tuple(M.shape), []).append(M)
    return [torch.stack(v) for v in by_shape.values()]
