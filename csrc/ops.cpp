// Every schema of the trp library, in one place. The backends register their kernels with
// TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/; the fake (meta) kernels are registered in
// Python (trp_kernels/ops/library.py), the conv's autograd formula in C++
// (csrc/aten/trp/lowrank_conv2d_autograd.cpp). The module trp_kernels._C is csrc/python/.
#include <torch/library.h>

TORCH_LIBRARY(trp, m) {
  // Batched truncated SVD with the rank rule (energy / threshold / max_rank). Entries at
  // positions >= rank are exactly zero. Not differentiable. A matrix holding inf/nan: the CPU
  // kernel raises ValueError; device kernels (which must not synchronise) give it rank -1 and
  // NaN outputs, and the Python wrappers raise on that unless check_finite=False.
  m.def(
      "truncated_svd(Tensor W, float? energy=None, float? threshold=None, int? max_rank=None)"
      " -> (Tensor U, Tensor S, Tensor V, Tensor rank)");
  // TRP projection W_low = U_r S_r V_r^T and nuclear-norm sub-gradient U_r V_r^T in one call,
  // and the basis to start the next projection of this matrix from: float64 [..., k, k], k =
  // min(m, n), orthonormal columns, the short side's singular vectors largest first (past the
  // rank, after a warm solve, an orthonormal basis of the rest). `basis`: that of the previous
  // projection (a warm start, docs/svd_paths.md "Warm start"); the result is the cold one's to
  // tolerance, with the same rank, and a start that does not help is ignored.
  m.def(
      "lowrank_project(Tensor W, float? energy=None, float? threshold=None, int? max_rank=None,"
      " Tensor? basis=None) -> (Tensor W_low, Tensor subgrad, Tensor rank, Tensor basis)");
  // lowrank_project of several groups (one [..., m_i, n_i] tensor per shape) in one call, so a
  // whole model's layers are projected by a single op; `basis`: one start (or None) per group.
  m.def(
      "lowrank_project_groups(Tensor[] W, float? energy=None, float? threshold=None,"
      " int? max_rank=None, Tensor?[]? basis=None)"
      " -> (Tensor[] W_low, Tensor[] subgrad, Tensor[] rank, Tensor[] basis)");
  // Low-rank convolution: conv(x, weight1) followed by conv(., weight2) + bias, with the
  // geometry split of the scheme ("channel" or "spatial").
  m.def(
      "lowrank_conv2d(Tensor x, Tensor weight1, Tensor weight2, Tensor? bias, int[2] stride,"
      " int[2] padding, int[2] dilation, str scheme) -> Tensor");
  // Its backward; output_mask selects (grad_x, grad_weight1, grad_weight2, grad_bias), and an
  // unselected gradient comes back as an empty tensor.
  m.def(
      "lowrank_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight1, Tensor weight2,"
      " int[2] stride, int[2] padding, int[2] dilation, str scheme, bool[4] output_mask)"
      " -> (Tensor grad_x, Tensor grad_weight1, Tensor grad_weight2, Tensor grad_bias)");
  // Whether the automatic implementation choice of lowrank_conv2d on CUDA may pick the fused
  // kernel (process-wide; set at import from trp_kernels/ops/backends.py), and its current value.
  m.def("set_fused_conv_in_auto(bool allowed) -> ()");
  m.def("fused_conv_in_auto() -> bool");
  // The measured choices of lowrank_conv2d's implementation (csrc/aten/trp/conv_choice_store.h):
  // the file that keeps them across processes (None: this process only; set at import by
  // trp_kernels/ops/backends.py), a clear of this process's choices (and of the file), and the
  // choices as "origin<TAB>key<TAB>impl<TAB>details" lines.
  m.def("set_conv_choice_file(str? path) -> ()");
  m.def("conv_choice_file() -> str?");
  m.def("clear_conv_choices(bool remove_file=False) -> ()");
  m.def("conv_choice_records() -> str[]");
  // The store as the emulated device's launcher reaches it (the CUDA launcher calls it in C++):
  // the choice kept for a key, keeping one, and the count of clears.
  m.def("_stored_conv_choice(str key) -> str?");
  m.def("_store_conv_choice(str key, str impl, str details) -> ()");
  m.def("_conv_choice_generation() -> int");
  // The CPU kernel's warm starts since the process started (or the last reset): solves
  // accepted, starts rejected (non-finite or not orthonormal), starts without a usable leading
  // block, solves not certified (the last three ran the cold eigensolver), and the power steps
  // of the accepted ones (csrc/cpu/warm_eigen.h).
  m.def("warm_start_counts(bool reset=False) -> int[]");
}
