// From the eigenvalues of a Gram matrix to what the SVD ops return about the spectrum: the
// descending order, the noise floor, the singular values and the rank of the rule. One thread
// block per matrix; shared by the fused kernel and the blocked path's spectrum kernel.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "trp/rank_rule.h"
#include "trp/svd/svd_scaling.cuh"

namespace trp::cuda {

// lambda[c * stride], c < k: the eigenvalues (scaled domain, see svd_scaling.cuh) of the Gram
// matrix of the k x long_dim orientation of one matrix, in eigenvector order. Writes
//   order[j]: the eigenvector of the j-th largest eigenvalue (ties: the smaller index first),
//   sigma[j]: the j-th singular value (scaled domain), exact zeros past the numerical rank,
// and returns the rank of `rule` (-1 for a matrix marked `nonfinite`). `shared_rank` is one
// int64 of shared memory. All threads of the block must call it.
//
// flush_noise (float32 inputs, whose single Gram pass has an absolute eigenvalue error of about
// (long_dim + k) eps lambda_1): eigenvalues at or below that floor are exact zeros, as in the
// CPU kernel (csrc/cpu/svd_core.cpp). Otherwise (float64 inputs, whose second pass is accurate
// relative to each eigenvalue) only the ones <= 0 are.
__device__ inline int64_t order_spectrum(const double* lambda, int64_t stride, int64_t k,
                                         int64_t long_dim, bool flush_noise, bool nonfinite,
                                         const RankRule& rule, int exponent, int32_t* order,
                                         double* sigma, int64_t* shared_rank) {
  // A NaN (only in a non-finite matrix) sorts last: the order stays a permutation.
  auto key = [&](int64_t c) {
    const double v = lambda[c * stride];
    return isnan(v) ? -INFINITY : v;
  };
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    const double v = key(c);
    int64_t position = 0;
    for (int64_t d = 0; d < k; ++d) {
      const double w = key(d);
      position += (w > v) || (w == v && d < c);
    }
    order[position] = static_cast<int32_t>(c);
    sigma[position] = v;
  }
  __syncthreads();
  const double largest = k > 0 && sigma[0] > 0.0 ? sigma[0] : 0.0;
  const double floor =
      flush_noise ? largest * static_cast<double>(long_dim + k) * DBL_EPSILON : 0.0;
  __syncthreads();  // every thread has read sigma[0]
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    sigma[j] = sigma[j] > floor ? sigma[j] : 0.0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    *shared_rank = nonfinite ? -1 : select_rank(sigma, k, scaled_rank_rule(rule, exponent));
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) sigma[j] = sqrt(sigma[j]);
  __syncthreads();
  return *shared_rank;
}

}  // namespace trp::cuda
