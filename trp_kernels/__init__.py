"""trp_kernels: Trained Rank Pruning and low-rank CNN training for PyTorch.

The public API (DESIGN.md section 2): ``truncated_svd``, ``lowrank_project``,
``lowrank_conv2d``, ``LowRankConv2d`` and ``decompose_model``.
"""

from .conv import lowrank_conv2d
from .decompose import decompose_model
from .layers import LowRankConv2d
from .svd import lowrank_project, truncated_svd

__all__ = [
    "truncated_svd",
    "lowrank_project",
    "lowrank_conv2d",
    "LowRankConv2d",
    "decompose_model",
]
__version__ = "0.1.0"
