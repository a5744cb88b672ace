// The warp-level arithmetic of the fused low-rank convolution kernel (lowrank_conv2d_fused.cuh):
// element conversions, tf32 operand preparation, the mma steps over a row of accumulator tiles,
// and the lanes' ldmatrix roles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "trp/conv/lowrank_conv2d_fused.h"
#include "trp/conv/mma_primitives.cuh"
#include "trp/cuda_utils.cuh"

namespace trp::cuda {
namespace fused {

// Raw bits of an element: the data movement never converts.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;

constexpr int kTilesPerChunk = kRankChunk / 8;  // n8 accumulator tiles of a warp
static_assert(kOutChunk == kRankChunk, "both GEMMs share the accumulator tile shape");
static_assert(kFusedThreads / kWarpSize * 16 == kMaxTilePixels, "a warp owns 16 pixel rows");

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}

// Two adjacent elements (4- or 8-byte aligned) from two floats.
template <typename T>
__device__ __forceinline__ void store_pair(void* dst, float a, float b) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  } else if constexpr (std::is_same_v<T, __half>) {
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
  }
}

// fp32 fragments (as ldmatrix loaded them) become tf32: rounded, or for 3xTF32 split into a
// rounded big part and the rounded remainder. fp16/bf16 fragments are used as loaded.
template <typename T, Tf32Mode kMode>
__device__ __forceinline__ void prepare_operand(uint32_t (&big)[4], uint32_t (&small)[4]) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (kMode == Tf32Mode::kSplit3) {
        const float value = __uint_as_float(big[i]);
        big[i] = to_tf32(big[i]);
        small[i] = to_tf32(__float_as_uint(value - __uint_as_float(big[i])));
      } else {
        big[i] = to_tf32(big[i]);
      }
    }
  }
}

// d += a * b for one 16 x 8 accumulator tile and one 32-byte K step. 3xTF32 adds the two
// correction products first, so they are not lost against the large one.
template <typename T, Tf32Mode kMode>
__device__ __forceinline__ void mma_step(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&a_small)[4], uint32_t b0, uint32_t b1,
                                         uint32_t b0_small, uint32_t b1_small) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (kMode == Tf32Mode::kSplit3) {
      mma_1688_tf32(d, a_small, b0, b1);
      mma_1688_tf32(d, a, b0_small, b1_small);
    }
    mma_1688_tf32(d, a, b0, b1);
  } else {
    mma_16816<T>(d, a, b0, b1);
  }
}

// d[2 * pair + {0, 1}] += a * (two n8 tiles of B, rows `b_rows` of a shared-memory tile whose
// rows hold K), for every pair below `active_pairs`.
template <typename T, Tf32Mode kMode>
__device__ __forceinline__ void mma_row_of_tiles(float (&d)[kTilesPerChunk][4],
                                                 uint32_t a_address, uint32_t b_address,
                                                 int b_pair_bytes, int active_pairs) {
  uint32_t a[4], a_small[4] = {};
  ldmatrix_x4(a, a_address);
  prepare_operand<T, kMode>(a, a_small);
#pragma unroll
  for (int pair = 0; pair < kTilesPerChunk / 2; ++pair) {
    if (pair < active_pairs) {
      uint32_t b[4], b_small[4] = {};
      ldmatrix_x4(b, b_address + pair * b_pair_bytes);
      prepare_operand<T, kMode>(b, b_small);
      mma_step<T, kMode>(d[2 * pair], a, a_small, b[0], b[1], b_small[0], b_small[1]);
      mma_step<T, kMode>(d[2 * pair + 1], a, a_small, b[2], b[3], b_small[2], b_small[3]);
    }
  }
}

__device__ __forceinline__ void zero(float (&d)[kTilesPerChunk][4]) {
#pragma unroll
  for (int i = 0; i < kTilesPerChunk; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) d[i][j] = 0.f;
  }
}

// ldmatrix lane roles: an A fragment (16 rows x 32 bytes) reads row lane % 16, 16-byte half
// lane / 16; a pair of B n8 tiles (16 rows x 32 bytes) reads row lane % 8 + 8 * (lane / 16),
// half (lane / 8) % 2.
__device__ __forceinline__ int a_lane_half_bytes(int lane) { return (lane >> 4) * 16; }
__device__ __forceinline__ int b_lane_offset_bytes(int lane, int row_bytes) {
  return ((lane & 7) + ((lane >> 4) << 3)) * row_bytes + ((lane >> 3) & 1) * 16;
}

}  // namespace fused
}  // namespace trp::cuda
