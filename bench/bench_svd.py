"""The TRP projection of every decomposable conv of a network (random weights, energy 0.9):
W_low = U_r S_r V_r^T and the nuclear sub-gradient U_r V_r^T for all layers.

case: `<network>-<scheme>` (the layer sets of bench/layer_sets.json).
impl:
  trp            one trp::lowrank_project_groups call for all groups of same-shaped layers, the
                 compiled op (TRP_SVD_IMPL=jacobi: LAPACK kernels on CPU, Jacobi on CUDA)
  trp_eigh       the same call on the composite path (TRP_SVD_IMPL=eigh, trp_kernels/
                 svd_composite.py: float64 Gram + torch.linalg.eigh, one eigh per distinct k)
  official_loop, torch_svd, torch_gram   the baselines of bench/svd_baselines.py
  torch_gesvda   torch_svd with driver="gesvda" (CUDA only)
Groups are stacked before timing (the trainer keeps them stacked), so every impl but the
official loop times the same work.
"""

from __future__ import annotations

import pytest
import torch

from trp_kernels.ops import backends
from trp_kernels.ops.svd import lowrank_project_groups

from conftest import QUICK, devices
from layer_sets import NETWORKS, groups, weights
from svd_baselines import ENERGY, official_loop, torch_gram, torch_svd

SCHEMES = ("channel", "spatial")
IMPLS = ("trp", "trp_eigh", "official_loop", "torch_svd", "torch_gesvda", "torch_gram")
SVD_PATH = {"trp": "jacobi", "trp_eigh": "eigh"}   # TRP_SVD_IMPL of the library's impls


def trp(stacked):
    return lowrank_project_groups(stacked, energy=ENERGY, check_finite=False)


NETS = ("resnet20",) if QUICK else NETWORKS


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("network", NETS)
def test_projection(bench, network, scheme, impl, device):
    if impl == "torch_gesvda" and device != "cuda":
        pytest.skip("gesvda is a cuSOLVER driver")
    matrices = weights(network, scheme, device=device)
    stacked = groups(matrices)
    fn = {
        "trp": lambda: trp(stacked),
        "trp_eigh": lambda: trp(stacked),
        "official_loop": lambda: official_loop(matrices),
        "torch_svd": lambda: torch_svd(stacked),
        "torch_gesvda": lambda: torch_svd(stacked, driver="gesvda"),
        "torch_gram": lambda: torch_gram(stacked),
    }[impl]
    big = network in ("resnet18", "resnet50") and device == "cpu"
    # torch's eigensolvers and SVDs synchronise with the device (convergence checks): every impl
    # is timed alike, one synchronised call per round
    with backends.forced(svd=SVD_PATH.get(impl, "auto")):
        bench(f"{network}-{scheme}", fn, device, rounds=3 if (QUICK or big) else None,
              synchronizes=True)
