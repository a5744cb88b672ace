"""trp_kernels: Trained Rank Pruning and low-rank CNN training for PyTorch.

The public API (docs/design.md, "Public API"), re-exported from the subpackages, which are
layered by concern (docs/design.md, "Layout"): ops (the torch.ops.trp ops) <- schemes (the
low-rank schemes, LowRankConv2d, LowRankLinear) <- compression (decompose_model, export)
<- rank_training (TRP, ELRT) <- training (the trainer behind ``python -m trp_kernels train``)
<- cli; the models are in ``trp_kernels.models``.
"""

from ._version import __version__
from .compression import (decompose_model, export_onnx, export_program, load_model, save_model,
                          to_conv_pairs)
from .ops import lowrank_conv2d, lowrank_project, truncated_svd
from .rank_training import TRPRegularizer, make_lowrank, orthogonality_penalty
from .schemes import LowRankConv2d, LowRankLinear

__all__ = [
    "truncated_svd",
    "lowrank_project",
    "lowrank_conv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "decompose_model",
    "TRPRegularizer",
    "make_lowrank",
    "orthogonality_penalty",
    "save_model",
    "load_model",
    "to_conv_pairs",
    "export_program",
    "export_onnx",
    "__version__",
]
