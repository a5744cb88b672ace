// The per-matrix SVD engine behind trp::truncated_svd and trp::lowrank_project on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "trp/rank_rule.h"

namespace trp::cpu {

// The SVD of one m x n matrix, truncated by the rank rule, in float64. Only the first `rank`
// columns of `left` (m x rank) and `right` (n x rank) are filled; both are column-major.
struct MatrixSVD {
  int64_t m = 0, n = 0, k = 0;
  int64_t rank = 0;
  std::vector<double> sigma;  // k values, descending; exact zeros past the numerical rank
  const double* left = nullptr;
  const double* right = nullptr;
};

// Computes the SVD of every matrix of W ([..., m, n], contiguous, float32 or float64) in
// parallel over the batch and calls `emit(index, svd)` once per matrix, from worker threads.
// Raises ValueError if any matrix holds a non-finite value.
void batched_svd(const at::Tensor& W, const RankRule& rule,
                 const std::function<void(int64_t, const MatrixSVD&)>& emit);

// Writes left_r diag(sigma_r) right_r^T (with_sigma) or left_r right_r^T (the nuclear-norm
// sub-gradient) into the row-major m x n `out`; zeros when the rank is 0.
void compose_low_rank(const MatrixSVD& svd, bool with_sigma, double* out);

}  // namespace trp::cpu
