"""The compiled CPU SVD ops at the sizes users run, on 1, 2 and 4 threads, against float64,
cold and warm-started.

The CPU kernel spreads the matrices of a batch over worker threads and calls LAPACK in each.
Small cases hide what goes wrong there: MKL's symmetric eigensolver returned garbage for
k >= 512 when it was called from inside an OpenMP parallel region, so these cases reach
k = 1600 (the ResNet-18/50 layer sets have k up to 1536) with batches of 1 to 5 matrices, in
both dtypes (float32 takes the Gram + syevd route, float64 gesdd), on every thread count, and
a repeated call must give the same bits. A whole layer set of mixed groups goes through
``lowrank_project_groups`` the same way, cold and warm-started from the bases of a projection
one training step earlier (the warm solver's own BLAS and LAPACK calls run in the same workers).
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch

import trp_kernels as tk
from testing import (assert_svd_contract, float64_svd, one_step_later, trained_spectrum,
                     with_spectrum)
from trp_kernels.ops import backends
from trp_kernels.ops.svd import lowrank_project_groups, reference_lowrank_project

THREADS = (1, 2, 4)
ENERGY = 0.9

# (m, n, batch): k = min(m, n) from 2 to 1600 across LAPACK's size classes (syevd's QR/divide
# and conquer switch at 25, MKL's threaded paths from 512), wide, tall and square, batches 1-5.
CASES = [
    (2, 3, 5), (16, 144, 4), (48, 48, 3), (65, 64, 2), (192, 384, 5), (384, 384, 2),
    (511, 511, 3), (512, 512, 2), (520, 520, 1), (513, 1024, 2), (4608, 512, 2), (768, 768, 3),
    (1536, 1536, 2), (1600, 1600, 2),
]
# The float64 route (gesdd) is slower; the same boundaries at fewer sizes.
CASES_FLOAT64 = [(16, 144, 4), (512, 512, 2), (1024, 768, 2)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=THREADS, ids=lambda t: f"threads{t}")
def on_threads(request):
    """Calls a function with torch set to the case's thread count, restored afterwards; the
    checks run outside it (four threads on a 2-core machine slow torch's own BLAS calls)."""
    def call(fn, *args, **kwargs):
        saved = torch.get_num_threads()
        torch.set_num_threads(request.param)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved)
    return call


@pytest.fixture(autouse=True)
def compiled_op():
    with backends.forced(svd="jacobi"):
        yield


@functools.lru_cache(maxsize=None)
def _case(m, n, batch, dtype):
    """The matrices of a case (scaled so s_1 is about 1) and their float64 reference, computed
    once for all thread counts."""
    g = torch.Generator().manual_seed(m * 10007 + n * 31 + batch)
    W = (torch.randn(batch, m, n, dtype=torch.float64, generator=g) / max(m, n) ** 0.5).to(dtype)
    return W, float64_svd(W)


def _params(cases, dtype):
    return [pytest.param(m, n, b, dtype, id=f"{m}x{n}-b{b}-{str(dtype)[6:]}") for m, n, b in cases]


@pytest.mark.parametrize("m,n,batch,dtype", _params(CASES, torch.float32)
                         + _params(CASES_FLOAT64, torch.float64))
def test_truncated_svd_at_scale(on_threads, m, n, batch, dtype):
    W, reference = _case(m, n, batch, dtype)
    rule = {"energy": 1.0}  # every singular value and vector is checked
    out = on_threads(tk.truncated_svd, W, **rule)
    assert_svd_contract(W, out, rule, reference=reference)
    again = on_threads(tk.truncated_svd, W, **rule)
    for first, second in zip(out, again):
        assert torch.equal(first, second), "a repeated call changed the result"


def _resnet18_channel_groups(extra_shapes, matrix):
    """The ResNet-18 channel set's matrix shapes (bench/layer_sets.json) and ``extra_shapes``,
    one ``matrix(shape)`` each, stacked by shape in first-seen order as the trainer stacks
    them."""
    with open(os.path.join(ROOT, "bench", "layer_sets.json")) as f:
        layers = json.load(f)["resnet18"]
    by_shape: dict[tuple, list] = {}
    for shape in [tuple(layer["channel_matrix"]) for layer in layers] + list(extra_shapes):
        by_shape.setdefault(shape, []).append(matrix(shape))
    return [torch.stack(v) for v in by_shape.values()]


@functools.lru_cache(maxsize=None)
def _layer_set_groups():
    """The ResNet-18 channel set (k up to 512, L up to 4608) as the trainer stacks it, with two
    spatial groups of the ResNet-18 set (k = 768) beside: groups of mixed shapes in one call."""
    g = torch.Generator().manual_seed(18)
    groups = _resnet18_channel_groups([(768, 768)] * 3 + [(384, 768)],
                                      lambda shape: torch.randn(shape, generator=g) / max(shape) ** 0.5)
    return groups, [reference_lowrank_project(G, energy=ENERGY) for G in groups]


def assert_groups_match(groups, lows, subgrads, ranks, references):
    """Each group's ranks equal the float64 reference's, W_low within 1e-5 and the sub-gradient
    within 1e-4 of its norm."""
    for G, low, sub, rank, ref in zip(groups, lows, subgrads, ranks, references):
        where = f"group {tuple(G.shape)}"
        assert torch.equal(rank, ref.rank), where
        scale = torch.linalg.matrix_norm(G.double()).max()
        assert (low.double() - ref.W_low.double()).abs().max() <= 1e-5 * scale, where
        sub_scale = torch.linalg.matrix_norm(ref.subgrad.double()).max()
        assert (sub.double() - ref.subgrad.double()).abs().max() <= 1e-4 * sub_scale, where


def test_project_groups_at_scale(on_threads):
    groups, references = _layer_set_groups()
    lows, subgrads, ranks = on_threads(lowrank_project_groups, groups, energy=ENERGY)
    assert_groups_match(groups, lows, subgrads, ranks, references)
    again = on_threads(lowrank_project_groups, groups, energy=ENERGY)
    for first, second in zip((lows, subgrads, ranks), again):
        assert all(torch.equal(a, b) for a, b in zip(first, second)), "a repeated call changed"


@functools.lru_cache(maxsize=None)
def _warm_groups():
    """The ResNet-18 channel set and the largest spatial groups of the ResNet-18/50 sets (k = 768
    and 1536) one TRP step after a projection, with the bases of that projection: what a warm
    start sees at the sizes users run. Each matrix has a trained layer's decaying spectrum
    (testing.trained_spectrum), is projected (energy 0.9) and then moved by 2e-3 of its norm;
    the float64 references are of the moved matrices."""
    g = torch.Generator().manual_seed(50)
    first = _resnet18_channel_groups([(768, 768)] * 2 + [(1536, 1536)], lambda shape: with_spectrum(
        shape, trained_spectrum(min(shape)), g).float())
    lows, _, _, bases = lowrank_project_groups(first, energy=ENERGY, return_basis=True)
    moved = [one_step_later(low, seed=i) for i, low in enumerate(lows)]
    return moved, bases, [reference_lowrank_project(G, energy=ENERGY) for G in moved]


def test_warm_project_groups_at_scale(on_threads):
    """Every matrix takes the warm solver (counted), on every thread count, with the float64
    reference's ranks and projection."""
    groups, bases, references = _warm_groups()
    torch.ops.trp.warm_start_counts(True)
    lows, subgrads, ranks = on_threads(lowrank_project_groups, groups, energy=ENERGY,
                                       basis=bases)
    accepted = torch.ops.trp.warm_start_counts(True)[0]
    assert accepted == sum(G.shape[0] for G in groups)
    assert_groups_match(groups, lows, subgrads, ranks, references)
    again = on_threads(lowrank_project_groups, groups, energy=ENERGY, basis=bases)
    for first, second in zip((lows, subgrads, ranks), again):
        assert all(torch.equal(a, b) for a, b in zip(first, second)), "a repeated call changed"
