// Torch-free entry points of the CUDA SVD behind trp::truncated_svd and trp::lowrank_project
// (the algorithms: docs/cuda_svd.md). The ATen side (csrc/cuda/svd_launch.cpp) allocates,
// runs the GEMMs through cuBLAS and calls these on the current stream; none synchronises.
//
// Every m x n matrix W is handled in its k x L orientation A (k = min(m, n), L = max(m, n)):
// A = W when m <= n ("wide"), A = W^T otherwise. The short side has the k-vectors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "trp/rank_rule.h"

namespace trp::cuda {

// ---- Fused path: one thread block per matrix does everything, in one launch ------------------

// Largest k of the fused kernel: its Gram matrix, eigenvectors and work arrays fit in shared
// memory (about 120 KB for float64 at k = 64) and its 16 x 16 threads tile the Gram matrix.
constexpr int64_t kFusedSvdMaxK = 64;

// T: the input dtype; F: the dtype of the factors written (T for truncated_svd, float64 for the
// factors lowrank_project composes from).
template <typename T, typename F>
struct FusedSvdArgs {
  const T* w;          // [batch, m, n] row-major
  int64_t batch, m, n;
  RankRule rule;
  int64_t* rank;       // [batch]
  F* u;                // [batch, m, k]
  F* v;                // [batch, n, k]
  F* s;                // [batch, k], or null
  T* low;              // [batch, m, n] U_r S_r V_r^T, or null
  T* subgrad;          // [batch, m, n] U_r V_r^T, or null (null exactly when low is)
  double* scratch;     // [batch, fused_svd_scratch_elems<T>(m, n)]
  // Warm start (docs/cuda_svd.md, "Warm start"), both optional:
  const double* start;  // [batch, k, k] row-major, vectors as columns: where to start from
  double* basis;        // [batch, k, k] out: every eigenvector of the short side's Gram
                        // matrix, largest first, as columns (the next call's start)
};

// Per matrix: the completion's two L-vectors, and for float64 the refinement pass's L x k
// product (csrc/cuda/fused_svd.cu).
template <typename T>
constexpr int64_t fused_svd_scratch_elems(int64_t m, int64_t n) {
  const int64_t k = m < n ? m : n, L = m < n ? n : m;
  return 2 * L + (std::is_same_v<T, double> ? L * k : 0);
}

template <typename T, typename F>
cudaError_t launch_fused_svd(const FusedSvdArgs<T, F>& args, cudaStream_t stream);

// ---- Blocked path (k > kFusedSvdMaxK): scaling, cuBLAS Gram, blocked Jacobi, factors ---------

// max_bits[b] (the bits of max |finite entry| of matrix b) and nonfinite[b] (1 if it holds
// inf/nan), both zero on entry; `elems` entries per matrix.
template <typename T>
cudaError_t launch_scale_scan(const T* w, int64_t batch, int64_t elems,
                              unsigned long long* max_bits, int32_t* nonfinite,
                              cudaStream_t stream);

// out = w * 2^-e(b) in float64 (trp/svd/svd_scaling.cuh), same layout.
template <typename T>
cudaError_t launch_scale_to_double(const T* w, int64_t batch, int64_t elems,
                                   const unsigned long long* max_bits, double* out,
                                   cudaStream_t stream);

// Most sweeps of the blocked Jacobi per eigenproblem; it stops after the first sweep without any
// rotation (convergence is a device-side count, csrc/cuda/block_jacobi.cu).
constexpr int kBlockJacobiMaxSweeps = 24;

// The blocked Jacobi of `batch` symmetric dim x dim float64 matrices: dim is a multiple of
// `tile`, and the pairs of (tile/2)-blocks are the units of work.
struct BlockJacobiArgs {
  double* g;                 // [batch, dim, dim] both triangles; the eigenvalues on exit
  double* q;                 // [batch, dim, dim] identity on entry; eigenvectors as columns
  double* rotations;         // [batch, dim / tile, tile, tile] scratch
  int32_t* rotating;         // [batch, dim / tile] scratch
  int32_t* sweep_rotations;  // [batch, kBlockJacobiMaxSweeps], zero on entry
  int32_t* any_rotations;    // [kBlockJacobiMaxSweeps], zero on entry: the batch's total
  int64_t batch;
  int64_t dim;
  int tile;
};

// The pair tile (32 or 64) and padded order chosen for a k x k eigenproblem.
int block_jacobi_tile(int64_t k);
int64_t block_jacobi_dim(int64_t k);

cudaError_t launch_block_jacobi(const BlockJacobiArgs& args, cudaStream_t stream);

// Order, noise floor, singular values and rank (trp/svd/svd_spectrum.cuh) from the eigenvalues on
// the diagonal of g, one block per matrix.
struct SpectrumArgs {
  const double* g;   // [batch] matrices of `g_batch_stride` elements, row stride g_ld
  int64_t g_ld, g_batch_stride;
  int64_t batch, k, long_dim;
  bool flush_noise;  // float32 inputs
  RankRule rule;
  const unsigned long long* max_bits;  // [batch]
  const int32_t* nonfinite;            // [batch]
  int32_t* order;                      // [batch, k]
  double* sigma;                       // [batch, k] scaled domain
  int64_t* rank;                       // [batch]
};
cudaError_t launch_spectrum(const SpectrumArgs& args, cudaStream_t stream);

// The factors from the eigenvectors: short[:, order[j]] and long[:, order[j]] / sigma[j] for
// j < rank, zeros past it, completion of kept columns with sigma = 0, NaN for rank -1.
template <typename F>
struct FactorArgs {
  const double* short_vecs;  // [batch] k x k (stride short_ld), eigenvector c in column c
  int64_t short_ld, short_batch_stride;
  const double* long_vecs;   // [batch] L x k (stride long_ld): A^T times those columns
  int64_t long_ld, long_batch_stride;
  const int32_t* order;      // [batch, k]
  const double* sigma;       // [batch, k] scaled domain
  const int64_t* rank;       // [batch]
  const unsigned long long* max_bits;  // [batch]
  int64_t batch, m, n;
  F* u;                      // [batch, m, k]
  F* v;                      // [batch, n, k]
  F* s;                      // [batch, k] or null
  F* us;                     // [batch, m, k] U diag(S) (for the projection GEMM), or null
  double* scratch;           // [batch, 2 * L + k] for the completion
};
template <typename F>
cudaError_t launch_svd_factors(const FactorArgs<F>& args, cudaStream_t stream);

}  // namespace trp::cuda
