"""One test case per low-rank scheme: what the tests of every area (layers, decomposition, TRP,
low-rank training, export, compile) need to know about a scheme, as one subclass of
``SchemeCase``. A new scheme gets every one of those tests by adding its subclass here; a test
of the registry (tests/schemes/test_geometry.py) fails until it has one.

Each test module parametrizes over the subclasses with ``@every_scheme``; its test functions take
the instance as ``case``. The schemes of k x k convs share the test models; ``pointwise`` (1x1
convs and linear layers) gets the same models with 1x1 kernels (``kernel``, ``adapt``).
"""

from __future__ import annotations

import pytest
import torch

from small_models import with_1x1_kernels
from trp_kernels.ops.svd import reference_lowrank_project, reference_rank
from trp_kernels.schemes import geometry
from trp_kernels.schemes.matrix_views import IN_MODE, OUT_MODE, PER_FILTER


class SchemeCase:
    """The scheme ``name`` as the tests see it. Ranks are for the small layers the tests build
    (C = 6 inputs, N = 12 outputs, 3x3, unless a test says otherwise)."""

    name: str
    rank: object                 # a rank of a 6 -> 12 3x3 layer below its full rank
    resize_ranks: tuple          # two ranks of a 4 -> 8 and an 8 -> 8 3x3 layer
    fraction: object             # a rank as a fraction of each layer's full rank
    project_calls = 1            # lowrank_project_groups calls of one TRP step
    ops_per_step = 40            # bound on the tensor ops one TRP+Nu step dispatches
    output_atol = 1e-5           # float32 outputs of an exact decomposition, against dense
    # the layers of tests/small_models.SmallNet that stay dense at low_rank_weight's rank, and
    # of a digits ResNet-20 made low-rank at ``fraction``
    kept_dense_in_small_net: frozenset = frozenset()
    kept_dense_in_resnet20: frozenset = frozenset()
    # the layers of tests/small_models.SmallNet (adapted) that the scheme acts on, stem skipped
    small_net_layers = ("body.0", "body.5")

    @property
    def scheme(self) -> geometry.Scheme:
        return geometry.scheme(self.name)

    def id(self) -> str:
        return self.name

    def kernel(self, kernel_size):
        """The kernel of the scheme's layers where a test of k x k convs uses ``kernel_size``."""
        return kernel_size

    def adapt(self, model):
        """A test model (tests/small_models.py) as the scheme's tests use it."""
        return model

    def reference_rank(self, W: torch.Tensor, **rule):
        """The layer rank the rank rule gives the weight W, from float64 LAPACK singular values
        of each of the scheme's matrix views."""
        ranks = tuple(int(reference_rank(torch.linalg.svdvals(view.to_matrix(W.double())),
                                         **rule).max()) for view in self.scheme.views)
        return ranks if self.scheme.paired_rank else ranks[0]

    def low_rank_weight(self, shape):
        """(W, rank): a weight that the scheme factorises exactly at a rank that makes it
        cheaper than the dense conv: a random weight whose matrix view is cut to rank 3."""
        (view,) = self.scheme.views
        M = view.to_matrix(torch.randn(shape))
        return view.to_weight(reference_lowrank_project(M, max_rank=3).W_low.float(), shape), 3

    def trp_reference(self, W: torch.Tensor, energy: float):
        """(projected weight, nuclear sub-gradient, layer rank) of TRP on W, in float64: the
        energy truncation of the scheme's one matrix view."""
        (view,) = self.scheme.views
        ref = reference_lowrank_project(view.to_matrix(W.double()), energy=energy)
        return view.to_weight(ref.W_low, W.shape), view.to_weight(ref.subgrad, W.shape), \
            int(ref.rank)


class ChannelCase(SchemeCase):
    name, rank, resize_ranks, fraction = "channel", 4, (2, 5), 0.25


class SpatialCase(SchemeCase):
    name, rank, resize_ranks, fraction = "spatial", 4, (2, 5), 0.25


def multilinear_rank_2(shape):
    """A weight of multilinear rank (2, 2): W = core x_N U_out x_C U_in, so also of rank 2 per
    filter."""
    N, C, kh, kw = shape
    core = torch.randn(2, 2, kh, kw)
    return torch.einsum("na,abij,cb->ncij", torch.randn(N, 2), core, torch.randn(C, 2))


class Tucker2Case(SchemeCase):
    name, rank, resize_ranks, fraction = "tucker2", (3, 5), ((1, 3), (4, 2)), (0.25, 0.5)
    project_calls = 2            # one per mode unfolding
    output_atol = 1e-4

    def low_rank_weight(self, shape):
        return multilinear_rank_2(shape), (2, 2)

    def trp_reference(self, W, energy):
        """W x_N P_out x_C P_in with P = U_r U_r^T of each mode at its own energy rank, the
        sum of both modes' U_r V_r^T folded back, and (r_in, r_out)."""
        def mode(view):
            M = view.to_matrix(W.double())
            ref = reference_lowrank_project(M, energy=energy)
            U = torch.linalg.svd(M, full_matrices=False)[0][:, :int(ref.rank)]
            return U @ U.T, view.to_weight(ref.subgrad, W.shape), int(ref.rank)

        P_out, sub_out, r_out = mode(OUT_MODE)
        P_in, sub_in, r_in = mode(IN_MODE)
        low = torch.einsum("no,ocij,cp->npij", P_out, W.double(), P_in)
        return low, sub_out + sub_in, (r_in, r_out)


class DecoupledCase(SchemeCase):
    name, rank, resize_ranks, fraction = "decoupled", 2, (1, 3), 0.5
    ops_per_step = 80            # a rank shared per layer: mask and bmm ops per shape group
    output_atol = 1e-4
    # its C -> r*N 1x1 conv runs at the input resolution: on the stride-2 body.0 that costs
    # 2*16*8*16*16 + 2*16*9*8*8 = 83,968 MACs against the conv's 73,728
    kept_dense_in_small_net = frozenset({"body.0"})
    kept_dense_in_resnet20 = frozenset({"layer2.0.conv1", "layer3.0.conv1"})   # stride 2 too

    def low_rank_weight(self, shape):
        return multilinear_rank_2(shape), 2

    def trp_reference(self, W, energy):
        """Every filter at the layer's shared rank, the largest of its filters' energy ranks."""
        M = PER_FILTER.to_matrix(W.double())                        # [N, C, kh*kw]
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        r = int(reference_rank(S, energy=energy).max())
        low = (U[..., :r] * S[:, None, :r]) @ Vh[:, :r]
        sub = U[..., :r] @ Vh[:, :r]
        return PER_FILTER.to_weight(low, W.shape), PER_FILTER.to_weight(sub, W.shape), r


class PointwiseCase(SchemeCase):
    """1x1 convs (and linear layers): the test models with every k x k conv turned 1x1, so that
    the layers, names and weight shapes the tests count stay those of the k x k schemes."""

    name, rank, resize_ranks, fraction = "pointwise", 4, (2, 3), 0.25
    # SmallNet's 1x1 conv body.4 and its classifier too (skip names the stem alone)
    small_net_layers = ("body.0", "body.4", "body.5", "head")

    def kernel(self, kernel_size):
        return 1

    def adapt(self, model):
        return with_1x1_kernels(model)


CASES = [case() for case in SchemeCase.__subclasses__()]
every_scheme = pytest.mark.parametrize("case", CASES, ids=SchemeCase.id)


def rank_of(entry_rank):
    """A rank as a report or a regularizer gives it (a list from JSON, a tuple, an int)."""
    return tuple(entry_rank) if isinstance(entry_rank, (tuple, list)) else entry_rank
