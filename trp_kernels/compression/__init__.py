"""Compression of a trained model, above the schemes: which layers (selection.py), their ranks by
the rank rule or a FLOP budget (budget.py), the measured dense-or-factorised choice and the one
timer (latency.py), ``decompose_model`` itself (decompose.py) and how far it moved the model
(fidelity.py), and shipping the result (export.py; the optional ONNX packages: onnx_extra.py)
through crash-safe files (files.py); a state_dict of a compressed model loads into a freshly
built one after ``restore_lowrank`` (restore.py)."""

from .budget import BudgetPlan, Candidate, energy_for_budget, fraction_for_budget, plan_budget
from .decompose import DecompositionReport, LayerDecomposition, decompose_model
from .export import (arch_reference, build_arch, export_onnx, export_program, load_model,
                     lowrank_layers, save_model, saved_input_shape, to_conv_pairs)
from .fidelity import AGREEMENT_WARNING, FidelityWarning
from .files import (CheckpointError, OutputPathError, atomic_save, atomic_write, atomic_write_text,
                    check_output_dir, check_output_file, load_file)
from .latency import LatencyMeter, MeasuredChoice, Timing, choose_faster
from .onnx_extra import MissingExtra
from .restore import restore_lowrank
from .selection import (acts_on, decomposable_layers, is_decomposable, is_pointwise,
                        layer_scheme, never_decomposed)

__all__ = [
    "is_decomposable", "is_pointwise", "acts_on", "layer_scheme", "never_decomposed",
    "decomposable_layers",
    "BudgetPlan", "Candidate", "plan_budget", "energy_for_budget", "fraction_for_budget",
    "LatencyMeter", "Timing", "MeasuredChoice", "choose_faster",
    "decompose_model", "DecompositionReport", "LayerDecomposition",
    "save_model", "load_model", "arch_reference", "build_arch", "lowrank_layers",
    "restore_lowrank", "saved_input_shape", "to_conv_pairs", "export_program",
    "export_onnx",
    "CheckpointError", "OutputPathError", "atomic_write", "atomic_save", "atomic_write_text",
    "load_file", "check_output_dir", "check_output_file",
    "FidelityWarning", "AGREEMENT_WARNING", "MissingExtra",
]
