// Completion of long-side singular vectors whose singular value is zero. When the rule keeps a
// zero singular value (no energy/threshold criterion on a rank-deficient matrix), its long-side
// vector is not determined by A^T u / s; the kept factors must still be orthonormal. This is
// the CPU kernel's completion (csrc/cpu/svd_core.cpp, complete_column) on the device: column j
// starts as the canonical vector e_t with the largest component outside the span of columns
// 0..j-1 (those squared components sum to rows - j, so the largest is >= 1/rows), then two
// Gram-Schmidt passes ("twice is enough") and a normalisation.
// One thread block per matrix. It is a rare path: O(rows * last * (last - first)) work in one
// block, run only when a kept singular value is exactly zero.
#pragma once

#include <cmath>
#include <cstdint>

#include "trp/block_reduce.cuh"
#include "trp/cuda_utils.cuh"

namespace trp::cuda {

// Scratch of the completion: global memory for the rows-long vectors, shared for the rest.
struct CompletionScratch {
  double* vector;     // [rows] global: the column being built
  double* outside;    // [rows] global: 1 - squared norm of each row of the done columns
  double* dots;       // [last] shared or global: its dot products with the done columns
  double* reduce_v;   // [warps] shared
  int64_t* reduce_i;  // [warps] shared
};

// Columns first..last-1 of the rows x ld row-major `basis` (entries of type F) are made
// orthonormal to each other and to columns 0..first-1, which must be orthonormal already.
// All threads of the block must call it; it ends with a barrier.
template <typename F>
__device__ void complete_orthonormal_columns(F* basis, int64_t ld, int64_t rows, int64_t first,
                                             int64_t last, const CompletionScratch& s) {
  if (first >= last) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  for (int64_t t = threadIdx.x; t < rows; t += blockDim.x) {
    double inside = 0.0;
    for (int64_t c = 0; c < first; ++c) {
      const double b = static_cast<double>(basis[t * ld + c]);
      inside += b * b;
    }
    s.outside[t] = 1.0 - inside;
  }
  for (int64_t j = first; j < last; ++j) {
    __syncthreads();  // outside[] and the previous column are complete
    double best = -INFINITY;
    int64_t best_t = rows;
    for (int64_t t = threadIdx.x; t < rows; t += blockDim.x) {
      if (s.outside[t] > best) {  // strided order: the first maximum of this thread
        best = s.outside[t];
        best_t = t;
      }
    }
    const int64_t seed = block_argmax(best, best_t, s.reduce_v, s.reduce_i);
    // Pass 1: v = e_seed - sum_c basis[seed][c] basis[:, c] (the dots with e_seed are a row).
    for (int64_t t = warp; t < rows; t += warps) {
      double dot = 0.0;
      for (int64_t c = lane; c < j; c += kWarpSize) {
        dot += static_cast<double>(basis[t * ld + c]) * static_cast<double>(basis[seed * ld + c]);
      }
      dot = warp_sum(dot);
      if (lane == 0) s.vector[t] = (t == seed ? 1.0 : 0.0) - dot;
    }
    __syncthreads();
    // Pass 2: dots with the done columns (one thread per column), then subtract.
    for (int64_t c = threadIdx.x; c < j; c += blockDim.x) {
      double dot = 0.0;
      for (int64_t t = 0; t < rows; ++t) {
        dot += static_cast<double>(basis[t * ld + c]) * s.vector[t];
      }
      s.dots[c] = dot;
    }
    __syncthreads();
    double norm_sq = 0.0;
    for (int64_t t = warp; t < rows; t += warps) {
      double dot = 0.0;
      for (int64_t c = lane; c < j; c += kWarpSize) {
        dot += static_cast<double>(basis[t * ld + c]) * s.dots[c];
      }
      dot = warp_sum(dot);
      if (lane == 0) {
        const double v = s.vector[t] - dot;
        s.vector[t] = v;
        norm_sq += v * v;
      }
    }
    norm_sq = block_sum(norm_sq, s.reduce_v);
    const double inv_norm = 1.0 / sqrt(norm_sq);
    for (int64_t t = threadIdx.x; t < rows; t += blockDim.x) {
      const double v = s.vector[t] * inv_norm;
      basis[t * ld + j] = static_cast<F>(v);
      s.outside[t] -= v * v;
    }
  }
  __syncthreads();
}

}  // namespace trp::cuda

