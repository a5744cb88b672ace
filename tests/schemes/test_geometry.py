"""The scheme registry and its geometry: every registered scheme has a test case, the matrix
views of a weight (and how a weight lies over its matrix as a strided view), the thin convs of
each scheme with their sizes, MACs and parameters."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from scheme_cases import CASES, every_scheme
from trp_kernels.schemes import costs, geometry
from trp_kernels.schemes.matrix_views import IN_MODE, OUT_MODE, PER_FILTER, SPATIAL, MatrixView

VIEWS = [OUT_MODE, IN_MODE, SPATIAL, PER_FILTER]


def test_every_registered_scheme_has_a_test_case():
    assert sorted(case.name for case in CASES) == sorted(geometry.SCHEMES)


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_matrix_views_round_trip_batched(view):
    W = torch.randn(2, 3, 7, 5, 3, 2, dtype=torch.float64)
    M = view.to_matrix(W)
    assert tuple(M.shape) == (2, 3, *view.shape(W.shape))
    torch.testing.assert_close(view.to_weight(M, W.shape[-4:]), W, rtol=0, atol=0)
    torch.testing.assert_close(view.to_matrix(W[1, 2]), M[1, 2], rtol=0, atol=0)


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (8, 16, 3, 1), (5, 3, 1, 7), (1, 4, 2, 3)])
def test_a_weight_lies_over_its_matrix_as_a_strided_view(view, shape):
    matrix_shape, strides, offset = view.layout(shape)
    M = torch.randn(matrix_shape, dtype=torch.float64)
    weight = M.as_strided(shape, strides, offset)
    assert weight.data_ptr() == M.data_ptr()            # a view, no copy
    torch.testing.assert_close(weight, view.to_weight(M, shape), rtol=0, atol=0)
    torch.testing.assert_close(view.to_matrix(weight), M, rtol=0, atol=0)


class TruncatingView(MatrixView):
    """Keeps two elements of each filter: not a reshape or permutation of the weight."""

    def to_matrix(self, W):
        return W.flatten(-3)[..., :2]


def test_a_view_that_is_not_a_permutation_is_refused():
    with pytest.raises(ValueError, match="not a reshape or permutation"):
        TruncatingView("truncating").layout((4, 3, 3, 3))


@every_scheme
def test_thin_convs_sizes_macs_and_params(case):
    """The geometry's per-conv sizes, MACs and parameters are those of the plain convs."""
    s = case.scheme
    rank = (2, 3) if s.paired_rank else 2
    layer = tk.LowRankConv2d(4, 6, case.kernel((3, 5)), rank=rank, stride=(2, 1), padding=(2, 1),
                             dilation=(1, 2), scheme=case.name)
    x = torch.randn(1, 4, 11, 13)
    macs, hw = 0, (11, 13)
    for thin, conv in zip(layer.thin_convs(), layer.to_convs()):
        x = conv(x)
        step, hw = thin.macs(hw)
        assert hw == tuple(x.shape[-2:])
        macs += step
    assert hw == tuple(layer(torch.randn(1, 4, 11, 13)).shape[-2:])
    assert (macs, hw) == s.macs(layer.weight_shape, rank, (11, 13), layer.stride,
                                layer.padding, layer.dilation) == costs.lowrank_macs(layer, (11, 13))
    assert s.params(layer.weight_shape, rank, bias=True) == costs.count_params(layer)
    assert [tuple(f.shape) for f in layer.factors] == list(s.factor_shapes(layer.weight_shape, rank))


def test_macs_of_the_design():
    tucker = tk.LowRankConv2d(8, 16, 3, rank=(3, 5), stride=2, padding=1, scheme="tucker2")
    macs, out = costs.lowrank_macs(tucker, (32, 30))
    assert out == (16, 15)
    assert macs == 3 * 8 * 32 * 30 + (5 * 3 * 9 + 16 * 5) * 16 * 15
    decoupled = tk.LowRankConv2d(8, 16, 3, rank=2, stride=2, padding=1, scheme="decoupled")
    macs, out = costs.lowrank_macs(decoupled, (32, 30))
    assert macs == 2 * 16 * 8 * 32 * 30 + 2 * 16 * 9 * 16 * 15
