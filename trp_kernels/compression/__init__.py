"""Compression of a trained model, above the schemes: which layers (selection.py), their ranks by
the rank rule or a FLOP budget (budget.py), the measured dense-or-factorised choice and the one
timer (latency.py), ``decompose_model`` itself (decompose.py), and shipping the result
(export.py) through crash-safe files (files.py)."""

from .budget import BudgetPlan, Candidate, energy_for_budget, fraction_for_budget, plan_budget
from .decompose import DecompositionReport, LayerDecomposition, decompose_model
from .export import (arch_reference, build_arch, export_onnx, export_program, load_model,
                     lowrank_layers, restore_lowrank_layers, save_model, saved_input_shape,
                     to_conv_pairs)
from .files import CheckpointError, atomic_save, atomic_write, atomic_write_text, load_file
from .latency import LatencyMeter, MeasuredChoice, Timing, choose_faster
from .selection import (acts_on, decomposable_layers, is_decomposable, is_pointwise,
                        layer_scheme, never_decomposed)

__all__ = [
    "is_decomposable", "is_pointwise", "acts_on", "layer_scheme", "never_decomposed",
    "decomposable_layers",
    "BudgetPlan", "Candidate", "plan_budget", "energy_for_budget", "fraction_for_budget",
    "LatencyMeter", "Timing", "MeasuredChoice", "choose_faster",
    "decompose_model", "DecompositionReport", "LayerDecomposition",
    "save_model", "load_model", "arch_reference", "build_arch", "lowrank_layers",
    "restore_lowrank_layers", "saved_input_shape", "to_conv_pairs", "export_program",
    "export_onnx",
    "CheckpointError", "atomic_write", "atomic_save", "atomic_write_text", "load_file",
]
