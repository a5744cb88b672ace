// The per-matrix SVD engine behind the CPU kernels of trp::truncated_svd, trp::lowrank_project
// and trp::lowrank_project_groups.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "trp/rank_rule.h"

namespace trp::cpu {

// The SVD of one m x n matrix, truncated by the rank rule, in float64. Only the first `rank`
// columns of `left` (m x rank) and `right` (n x rank) are filled; both are column-major.
struct MatrixSVD {
  int64_t m = 0, n = 0, k = 0;
  int64_t rank = 0;
  std::vector<double> sigma;  // k values, descending; exact zeros past the rank
  const double* left = nullptr;
  const double* right = nullptr;
  // k x k, column-major, orthonormal columns: the eigenvectors of the Gram matrix of the short
  // side in descending order (the short side's singular vectors); past the rank, after a warm
  // solve, an orthonormal basis of the rest. What the next projection may start from.
  const double* basis = nullptr;
};

// Matrix `index` of input tensor `tensor`.
struct MatrixId {
  int64_t tensor;
  int64_t index;
};

// dst = src^T for k x k matrices (either storage order), in 32 x 32 tiles: a plain double loop
// misses the cache on every element of one side once k x k no longer fits in it (k >= 512).
inline void transpose_square(const double* src, int64_t k, double* dst) {
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < k; r0 += kTile) {
    for (int64_t c0 = 0; c0 < k; c0 += kTile) {
      const int64_t r1 = std::min(r0 + kTile, k), c1 = std::min(c0 + kTile, k);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * k + r] = src[r * k + c];
      }
    }
  }
}

// Computes the SVD of every matrix of every tensor of `inputs` (each [..., m, n], contiguous,
// float32 or float64; shapes and dtypes may differ between tensors) and calls
// `emit(id, svd)` once per matrix, from worker threads. The matrices are spread over the
// threads largest first and claimed dynamically, so a list of groups of different sizes keeps
// every thread busy. Raises ValueError naming `name` (or `name[t]` for a list) if a matrix holds
// a non-finite value.
//
// `starts` (empty, or one entry per input; an undefined entry: none): start bases, float64
// [..., k, k] contiguous with the batch of the input, columns largest first (a previous
// MatrixSVD::basis). A float32 matrix with a start tries the warm eigensolver (warm_eigen.h)
// and falls back to the cold one when it does not certify its result; float64 matrices keep
// LAPACK's SVD, whose accuracy the Gram matrix would lose, and ignore their start.
void batched_svd(at::TensorList inputs, const std::vector<at::Tensor>& starts,
                 const RankRule& rule, const char* name,
                 const std::function<void(MatrixId, const MatrixSVD&)>& emit);

// Writes left_r diag(sigma_r) right_r^T (with_sigma) or left_r right_r^T (the nuclear-norm
// sub-gradient) into the row-major m x n `out`; zeros when the rank is 0. The product runs in
// the output's precision: the factors are already float64-accurate and orthonormal, so a
// float32 product only adds float32 rounding.
template <typename scalar_t>
void compose_low_rank(const MatrixSVD& svd, bool with_sigma, scalar_t* out);

}  // namespace trp::cpu
