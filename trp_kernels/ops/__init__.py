"""The Python face of ``torch.ops.trp``, the lowest layer: loading the extension with its fake
kernels and autograd (library.py), the SVD ops and their composite path, the low-rank conv op,
the rank rule, the argument checks, and which implementation runs (backends.py)."""

from . import backends, checks
from .conv import composite_conv2d, lowrank_conv2d, reference_lowrank_conv2d
from .conv_geometry import ThinConv, chain_out_hw, conv_out_size, op_convs
from .library import memory_format_of, ops
from .rank_rule import select_rank
from .svd import (LowRankProjection, ProjectionWithBasis, TruncatedSVD, lowrank_project, lowrank_project_groups,
                  project_matrices, reference_lowrank_project, reference_rank,
                  reference_truncated_svd, truncated_svd)

__all__ = [
    "backends", "checks", "ops", "memory_format_of",
    "truncated_svd", "lowrank_project", "lowrank_project_groups", "project_matrices",
    "TruncatedSVD", "LowRankProjection", "ProjectionWithBasis", "select_rank",
    "reference_truncated_svd", "reference_lowrank_project", "reference_rank",
    "lowrank_conv2d", "composite_conv2d", "reference_lowrank_conv2d",
    "ThinConv", "chain_out_hw", "conv_out_size", "op_convs",
]
