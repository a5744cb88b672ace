"""The low-rank schemes (channel, spatial, tucker2, decoupled; pointwise for 1x1 convs and linear
layers), above the ops: their registry and geometry, the matrix views of a conv weight,
factorising weights by the rank rule, the layers ``LowRankConv2d`` and ``LowRankLinear`` and
what they cost (MACs and parameters)."""

from .costs import (NOMINAL_HW, ConvCost, conv2d_macs, conv_costs, conv_macs, count_params,
                    dense_macs, factorised_macs, is_cheaper, lowrank_macs, run_hooked)
from .factorization import (decompose_weight, decompose_weights, factor_matrices, factor_shapes,
                            factors_from_svd, full_rank, full_weight, matrix_shape, matrix_svds,
                            matrix_to_weight, weight_to_matrix)
from .geometry import SCHEMES, Scheme, format_rank, scheme
from .factorised_layer import FactorisedLayer
from .layer_kinds import (DENSE_LAYERS, LOWRANK_LAYERS, conv_weight_shape, decompose_layers,
                          empty_lowrank, lowrank_from_svd, plain_layers)
from .layers import LowRankConv2d, explicit_padding
from .lowrank_linear import LowRankLinear
from .matrix_views import IN_MODE, OUT_MODE, PER_FILTER, SPATIAL, MatrixView, weight_as_conv

__all__ = [
    "SCHEMES", "Scheme", "scheme", "format_rank",
    "MatrixView", "OUT_MODE", "IN_MODE", "SPATIAL", "PER_FILTER", "weight_as_conv",
    "decompose_weight", "decompose_weights", "factors_from_svd", "factor_matrices",
    "factor_shapes", "full_rank", "full_weight", "matrix_shape", "matrix_svds",
    "matrix_to_weight", "weight_to_matrix",
    "FactorisedLayer", "LowRankConv2d", "LowRankLinear", "explicit_padding",
    "DENSE_LAYERS", "LOWRANK_LAYERS", "conv_weight_shape", "decompose_layers", "empty_lowrank",
    "lowrank_from_svd", "plain_layers",
    "ConvCost", "NOMINAL_HW", "conv2d_macs", "conv_costs", "conv_macs", "count_params",
    "dense_macs", "factorised_macs", "is_cheaper", "lowrank_macs", "run_hooked",
]
