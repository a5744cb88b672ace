"""trp_kernels: Trained Rank Pruning and low-rank CNN training for PyTorch.

The public API (docs/design.md section 4): ``truncated_svd``, ``lowrank_project``,
``lowrank_conv2d``, ``LowRankConv2d`` (formats "channel", "spatial", "tucker2", "decoupled"; their
geometry is ``trp_kernels.geometry``) and ``decompose_model``; for training (docs/training.md):
``TRPRegularizer``, ``make_lowrank``, ``orthogonality_penalty``, and for shipping a compressed
model ``save_model``, ``load_model``, ``to_conv_pairs``, ``export_program``, ``export_onnx``.
The trainer behind ``python -m trp_kernels train`` is ``trp_kernels.training``; the models are
in ``trp_kernels.models``.
"""

from .ops import lowrank_conv2d, lowrank_project, truncated_svd
from .compression import (decompose_model, export_onnx, export_program, load_model, save_model,
                          to_conv_pairs)
from .schemes import LowRankConv2d
from .lowrank_train import make_lowrank, orthogonality_penalty
from .trp import TRPRegularizer
from ._version import __version__

__all__ = [
    "truncated_svd",
    "lowrank_project",
    "lowrank_conv2d",
    "LowRankConv2d",
    "decompose_model",
    "TRPRegularizer",
    "make_lowrank",
    "orthogonality_penalty",
    "save_model",
    "load_model",
    "to_conv_pairs",
    "export_program",
    "export_onnx",
]
