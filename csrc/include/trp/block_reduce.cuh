// Block-wide reductions of the SVD kernels that cuda_utils.cuh does not have: maximum, and
// arg-maximum with a deterministic tie-break. All threads of the block must call them.
#pragma once

#include <cstdint>

#include "trp/cuda_utils.cuh"

namespace trp::cuda {

// Maximum over the block; every thread gets it. `scratch` holds one double per warp.
__device__ inline double block_max(double v, double* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_max(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double best = scratch[0];
  for (int w = 1; w < warps; ++w) best = scratch[w] > best ? scratch[w] : best;
  return best;
}

// The index holding the largest value, the smallest such index on ties (so that the result
// does not depend on the thread layout); every thread gets it. `scratch_v` and `scratch_i`
// hold one entry per warp.
__device__ inline int64_t block_argmax(double value, int64_t index, double* scratch_v,
                                       int64_t* scratch_i) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const double v = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, index, offset);
    if (v > value || (v == value && i < index)) {
      value = v;
      index = i;
    }
  }
  __syncthreads();
  if (lane == 0) {
    scratch_v[warp] = value;
    scratch_i[warp] = index;
  }
  __syncthreads();
  double best_v = scratch_v[0];
  int64_t best_i = scratch_i[0];
  for (int w = 1; w < warps; ++w) {
    if (scratch_v[w] > best_v || (scratch_v[w] == best_v && scratch_i[w] < best_i)) {
      best_v = scratch_v[w];
      best_i = scratch_i[w];
    }
  }
  return best_i;
}

}  // namespace trp::cuda
