// CUDA helpers shared by every kernel. Torch-free: kernels and their host-side launch functions
// see raw pointers, sizes and a cudaStream_t, and report failures as cudaError_t; the ATen
// launchers (csrc/cuda/*_launch.cpp) turn those into exceptions with TRP_CUDA_CHECK
// (trp/cuda_launch.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

// Inside a function returning cudaError_t: return the error of `expr` if it failed.
#define TRP_CUDA_TRY(expr)                      \
  do {                                          \
    const cudaError_t trp_err_ = (expr);        \
    if (trp_err_ != cudaSuccess) return trp_err_; \
  } while (0)

// The launch-configuration error of the kernel launched just before (no synchronisation).
#define TRP_LAUNCH_STATUS() cudaGetLastError()

namespace trp::cuda {

constexpr int kWarpSize = 32;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n elements.
inline unsigned int grid_for(int64_t n, int threads, unsigned int max_blocks = 65535u * 32u) {
  const int64_t blocks = ceil_div(n > 0 ? n : 1, threads);
  return static_cast<unsigned int>(blocks < max_blocks ? blocks : max_blocks);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds one T per warp.
// All threads of the block must call it (it synchronises twice).
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

}  // namespace trp::cuda
