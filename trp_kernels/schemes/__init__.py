"""The low-rank schemes (channel, spatial, tucker2, decoupled), above the ops: their registry and
geometry, the matrix views of a conv weight, factorising weights by the rank rule, the layer
``LowRankConv2d`` and what convolutions cost (MACs and parameters)."""

from .costs import (NOMINAL_HW, ConvCost, conv2d_macs, conv_costs, conv_macs, count_params,
                    dense_macs, factorised_macs, is_cheaper, lowrank_macs, run_hooked)
from .factorization import (decompose_weight, decompose_weights, factor_matrices, factor_shapes,
                            factors_from_svd, full_rank, full_weight, matrix_shape, matrix_svds,
                            matrix_to_weight, weight_to_matrix)
from .geometry import SCHEMES, Scheme, format_rank, scheme
from .layers import LowRankConv2d, explicit_padding
from .matrix_views import IN_MODE, OUT_MODE, PER_FILTER, SPATIAL, MatrixView

__all__ = [
    "SCHEMES", "Scheme", "scheme", "format_rank",
    "MatrixView", "OUT_MODE", "IN_MODE", "SPATIAL", "PER_FILTER",
    "decompose_weight", "decompose_weights", "factors_from_svd", "factor_matrices",
    "factor_shapes", "full_rank", "full_weight", "matrix_shape", "matrix_svds",
    "matrix_to_weight", "weight_to_matrix",
    "LowRankConv2d", "explicit_padding",
    "ConvCost", "NOMINAL_HW", "conv2d_macs", "conv_costs", "conv_macs", "count_params",
    "dense_macs", "factorised_macs", "is_cheaper", "lowrank_macs", "run_hooked",
]
