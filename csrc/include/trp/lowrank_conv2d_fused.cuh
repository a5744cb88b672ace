// Fused low-rank convolution: both convolutions of trp::lowrank_conv2d in one kernel, the
// r-channel intermediate kept in shared memory (see lowrank_conv2d_fused.h for the problem and
// the tiling, docs/cuda_conv.md for the design). Included by one instantiation file per element
// type (csrc/cuda/lowrank_conv2d_fused_*.cu).
//
// Per block (256 threads, 8 warps), for tile_rows x tile_cols output pixels (tile rows are
// consecutive output rows of the batch, possibly of several images):
//  1. intermediate = implicit GEMM [tile_rows * mid_cols pixels] x [C * kh1 * kw1] x [r]:
//     per step, the input window of 32 bytes of channels goes global -> registers -> shared
//     memory (prefetched one step ahead) while packed weight1 arrives by cp.async; ldmatrix
//     gathers A rows straight from the window (one row per pixel and tap), so no im2col buffer
//     exists. Accumulators are fp32; the result is rounded to the element type (as the
//     intermediate tensor of two separate convolutions would be) into shared memory.
//  2. output = GEMM [tile pixels] x [kw2 * r] x [N], A rows gathered from the intermediate by
//     ldmatrix (tap kj of output column c reads intermediate column c * stride2 + kj * dil2;
//     columns outside the intermediate read a zero row), packed weight2 by cp.async, bias added
//     in the epilogue, stored in the layout of x.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "trp/cuda_utils.cuh"
#include "trp/lowrank_conv2d_fused.h"
#include "trp/mma_primitives.cuh"

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

// How the tile's rows map to rows of its input window. A tile inside one image shares input
// rows between its rows: tap ki of tile row tr reads window row tr * stride + ki * dil, so the
// window is the input rows the tile spans, each loaded once. A tile that crosses images (small
// feature maps) keeps kh1 window rows per tile row: window row tr * kh1 + ki. The plan sizes
// the window for the second form; the first is used when it is not taller.
struct WindowRows {
  int rows;      // window rows in use
  int row_step;  // between the window rows of consecutive tile rows
  int tap_step;  // between the window rows of consecutive kernel rows
  bool shared;
};

__device__ __forceinline__ WindowRows window_rows(const FusedConvShape& s, const FusedConvPlan& p,
                                                  int64_t out_row0) {
  const int64_t out_rows = s.batch * s.out_height;
  const int64_t last = (out_row0 + p.tile_rows < out_rows ? out_row0 + p.tile_rows : out_rows) - 1;
  const int shared_rows = (p.tile_rows - 1) * s.stride1[0] + (s.kh1 - 1) * s.dil1[0] + 1;
  if (out_row0 / s.out_height == last / s.out_height && shared_rows <= p.patch_rows) {
    return {shared_rows, s.stride1[0], s.dil1[0], true};
  }
  return {p.patch_rows, s.kh1, 1, false};
}

// The input window of a tile for one step of channels, staged global -> registers -> shared
// memory in 16-byte units (two per pixel; pixel stride kPatchPixelBytes), rows as WindowRows
// lays them out. Channels-last units are 16 contiguous bytes; NCHW units gather one element per
// channel plane, threads running along the width so that each load instruction is coalesced.
// Outside the image (and past the last row of the batch): zeros.
template <typename T, bool kChannelsLast>
class PatchLoader {
 public:
  static constexpr int kUnitChannels = 16 / sizeof(T);

  __device__ PatchLoader(const T* x, const FusedConvShape& s, const FusedConvPlan& p,
                         const WindowRows& window, int64_t first_out_row, int first_col)
      : x_(reinterpret_cast<const Bits<T>*>(x)),
        channel_stride_(kChannelsLast ? 1 : static_cast<int64_t>(s.height) * s.width),
        channels_(s.channels),
        vector_(kChannelsLast && s.channels % kUnitChannels == 0 &&
                reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const int pixels = window.rows * p.patch_cols;
    const int64_t out_rows = s.batch * s.out_height;
#pragma unroll
    for (int i = 0; i < kPatchUnitsPerThread; ++i) {
      const int unit = static_cast<int>(threadIdx.x) + i * kFusedThreads;
      const int pixel = kChannelsLast ? unit / 2 : unit % pixels;
      const int half = kChannelsLast ? unit % 2 : unit / pixels;
      const int window_row = pixel / p.patch_cols;
      // The output row whose first input row anchors this window row, and the offset from it.
      const int64_t out_row = first_out_row + (window.shared ? 0 : window_row / s.kh1);
      const int below = window.shared ? window_row : (window_row % s.kh1) * s.dil1[0];
      const int64_t image = out_row / s.out_height;
      const int row =
          static_cast<int>(out_row % s.out_height) * s.stride1[0] - s.pad1[0] + below;
      const int col = first_col + pixel % p.patch_cols;
      const bool inside =
          out_row < out_rows && row >= 0 && row < s.height && col >= 0 && col < s.width;
      smem_offset_[i] = unit < 2 * pixels ? pixel * kPatchPixelBytes + half * 16 : -1;
      if (!inside) {
        offset_[i] = -1;
      } else if (kChannelsLast) {
        offset_[i] = ((image * s.height + row) * s.width + col) * s.channels + half * kUnitChannels;
      } else {
        offset_[i] = (image * s.channels + half * kUnitChannels) * channel_stride_ +
                     static_cast<int64_t>(row) * s.width + col;
      }
    }
  }

  // Issues the loads of channels [c0, c0 + 32 bytes) into registers.
  __device__ __forceinline__ void load(int c0) {
#pragma unroll
    for (int i = 0; i < kPatchUnitsPerThread; ++i) {
      const int channel = c0 + first_channel(smem_offset_[i]);
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (smem_offset_[i] >= 0 && offset_[i] >= 0 && channel < channels_) {
        const Bits<T>* src = x_ + offset_[i] + c0 * channel_stride_;
        if (kChannelsLast && vector_) {
          v = __ldg(reinterpret_cast<const uint4*>(src));
        } else {
          v = gather(src, channels_ - channel);
        }
      }
      staged_[i] = v;
    }
  }

  __device__ __forceinline__ void store(unsigned char* patch) const {
#pragma unroll
    for (int i = 0; i < kPatchUnitsPerThread; ++i) {
      if (smem_offset_[i] >= 0) *reinterpret_cast<uint4*>(patch + smem_offset_[i]) = staged_[i];
    }
  }

 private:
  // kUnitChannels elements, channel_stride_ apart, the first `available` of them real.
  __device__ __forceinline__ uint4 gather(const Bits<T>* src, int available) const {
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int e = 0; e < kUnitChannels; ++e) {
      if (e < available) {
        const uint32_t bits = __ldg(src + e * channel_stride_);
        if constexpr (sizeof(T) == 2) {
          w[e / 2] |= bits << (16 * (e % 2));
        } else {
          w[e] = bits;
        }
      }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }

  const Bits<T>* x_;
  int64_t channel_stride_;
  int channels_;
  bool vector_;
  // The unit's first channel relative to c0: its half of the pixel's 32 bytes, read back from
  // the shared-memory offset (pixel * 48 + half * 16) instead of costing a register.
  static __device__ __forceinline__ int first_channel(int smem_offset) {
    static_assert(kPatchPixelBytes == 3 * 16, "a window pixel is three 16-byte words");
    return (smem_offset / 16) % 3 * kUnitChannels;
  }

  int64_t offset_[kPatchUnitsPerThread];  // element of the unit's first channel at c0 = 0
  int smem_offset_[kPatchUnitsPerThread];  // -1: this thread has no such unit
  uint4 staged_[kPatchUnitsPerThread];
};

// Packed weight1 rows [pass * kRankChunk, + ranks), channel chunk `chunk`, all taps, by
// cp.async; shared row stride taps * 32 + kRowPadBytes.
template <typename T>
__device__ __forceinline__ void load_weight1_stage(unsigned char* stage, const T* packed,
                                                   const FusedConvPlan& p, int taps, int pass,
                                                   int chunk, int ranks) {
  const int row_units = taps * 2;
  const int row_bytes = taps * 32 + kRowPadBytes;
  const auto* src = reinterpret_cast<const unsigned char*>(packed);
  for (int u = threadIdx.x; u < ranks * row_units; u += kFusedThreads) {
    const int row = u / row_units, unit = u % row_units;
    const int64_t rank = static_cast<int64_t>(pass) * kRankChunk + row;
    const int64_t byte = (rank * p.channel_chunks + chunk) * taps * 32 + unit * 16;
    cp_async_16(shared_address(stage + row * row_bytes + unit * 16), src + byte);
  }
}

// Packed weight2 rows [out_chunk * kOutChunk, + kOutChunk), tap kj, ranks
// [rank_chunk * kRankChunk, + kRankChunk), by cp.async.
template <typename T>
__device__ __forceinline__ void load_weight2_stage(unsigned char* stage, const T* packed,
                                                   const FusedConvShape& s, const FusedConvPlan& p,
                                                   int out_chunk, int kj, int rank_chunk) {
  constexpr int kRowUnits = kRankChunk * static_cast<int>(sizeof(T)) / 16;
  constexpr int kRowBytes = kRankChunk * static_cast<int>(sizeof(T)) + kRowPadBytes;
  for (int u = threadIdx.x; u < kOutChunk * kRowUnits; u += kFusedThreads) {
    const int row = u / kRowUnits, unit = u % kRowUnits;
    const int64_t n = static_cast<int64_t>(out_chunk) * kOutChunk + row;
    const T* src = packed + (n * s.kw2 + kj) * p.packed_rank_cols + rank_chunk * kRankChunk;
    cp_async_16(shared_address(stage + row * kRowBytes + unit * 16),
                reinterpret_cast<const unsigned char*>(src) + unit * 16);
  }
}

// A warp's accumulators (intermediate pixels warp * 16 + [0, 16), ranks of pass `pass`) into
// the shared intermediate, rounded to T.
template <typename T>
__device__ __forceinline__ void store_intermediate(const float (&acc)[kTilesPerChunk][4],
                                                   unsigned char* mid, const FusedConvPlan& p,
                                                   int warp, int lane, int pass, int ranks) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int tile = 0; tile < kTilesPerChunk; ++tile) {
    if (tile * 8 < ranks) {
      const int col = pass * kRankChunk + tile * 8 + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp * 16 + g + 8 * half;
        store_pair<T>(mid + row * p.mid_stride + col * static_cast<int>(sizeof(T)),
                      acc[tile][2 * half], acc[tile][2 * half + 1]);
      }
    }
  }
}

// Phase 1: the intermediate of the tile's tile_rows x mid_cols pixels, all ranks.
template <typename T, bool kChannelsLast, Tf32Mode kMode>
__device__ __forceinline__ void compute_intermediate(const FusedConvTensors<T>& t,
                                                     const FusedConvShape& s,
                                                     const FusedConvPlan& p,
                                                     int64_t out_row0, int mid_col0,
                                                     const unsigned char* zeros,
                                                     unsigned char* mid, unsigned char* stages) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int taps = s.kh1 * s.kw1;
  const int stage_bytes = p.patch_bytes + p.weight1_stage_bytes;
  const int weight1_row_bytes = taps * 32 + kRowPadBytes;
  const WindowRows rows = window_rows(s, p, out_row0);
  PatchLoader<T, kChannelsLast> window(t.x, s, p, rows, out_row0,
                                       mid_col0 * s.stride1[1] - s.pad1[1]);

  // This lane's A row is intermediate pixel `slot`; its taps read the window from a_row_byte.
  const int mid_pixels = p.tile_rows * p.mid_cols;
  const bool warp_active = warp * 16 < mid_pixels;
  const int slot = warp * 16 + (lane & 15);
  const bool slot_valid = slot < mid_pixels;
  const int a_row_byte = ((slot / p.mid_cols) * rows.row_step * p.patch_cols +
                          (slot % p.mid_cols) * s.stride1[1]) *
                         kPatchPixelBytes;
  const int a_half = a_lane_half_bytes(lane);
  const int b_offset = b_lane_offset_bytes(lane, weight1_row_bytes);

  const auto stage_at = [&](int step) { return stages + (step & 1) * stage_bytes; };
  const auto ranks_of = [&](int pass) { return min(kRankChunk, p.rank_pad - pass * kRankChunk); };
  const int steps = p.rank_passes * p.channel_chunks;

  window.load(0);
  load_weight1_stage<T>(stage_at(0) + p.patch_bytes, t.weight1_packed, p, taps, 0, 0,
                        ranks_of(0));
  cp_async_commit();
  window.store(stage_at(0));

  float acc[kTilesPerChunk][4];
  zero(acc);
  for (int step = 0; step < steps; ++step) {
    const int pass = step / p.channel_chunks, chunk = step % p.channel_chunks;
    // Stage step & 1 is complete, and every warp is done with the other stage.
    cp_async_wait_all();
    __syncthreads();
    const bool more = step + 1 < steps;
    if (more) {
      const int next_pass = (step + 1) / p.channel_chunks;
      const int next_chunk = (step + 1) % p.channel_chunks;
      load_weight1_stage<T>(stage_at(step + 1) + p.patch_bytes, t.weight1_packed, p, taps,
                            next_pass, next_chunk, ranks_of(next_pass));
      cp_async_commit();
      window.load(next_chunk * p.channel_chunk);
    }
    const int ranks = ranks_of(pass);
    if (warp_active) {
      const unsigned char* patch = stage_at(step);
      const uint32_t weight1 = shared_address(patch + p.patch_bytes) + b_offset;
      for (int ki = 0; ki < s.kh1; ++ki) {
        for (int kj = 0; kj < s.kw1; ++kj) {
          const int tap_byte =
              (ki * rows.tap_step * p.patch_cols + kj * s.dil1[1]) * kPatchPixelBytes;
          const unsigned char* a_row = slot_valid ? patch + a_row_byte + tap_byte : zeros;
          mma_row_of_tiles<T, kMode>(acc, shared_address(a_row + a_half),
                                     weight1 + (ki * s.kw1 + kj) * 32, 16 * weight1_row_bytes,
                                     ranks / 16);
        }
      }
    }
    if (more) window.store(stage_at(step + 1));
    if (chunk == p.channel_chunks - 1) {
      if (warp_active) store_intermediate<T>(acc, mid, p, warp, lane, pass, ranks);
      zero(acc);
    }
  }
}

// The accumulators of output channels out_chunk * kOutChunk + [0, 64) for the warp's 16 tile
// pixels, plus bias, to y.
template <typename T, bool kChannelsLast>
__device__ __forceinline__ void store_output(const float (&acc)[kTilesPerChunk][4],
                                             const FusedConvTensors<T>& t,
                                             const FusedConvShape& s, const FusedConvPlan& p,
                                             int64_t out_row0, int out_col0, int out_chunk) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane >> 2, q = lane & 3;
  const int n_total = s.out_channels;
  const int64_t plane = static_cast<int64_t>(s.out_height) * s.out_width;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int pixel = warp * 16 + g + 8 * half;
    const int64_t out_row = out_row0 + pixel / p.tile_cols;  // image * out_height + row
    const int col = out_col0 + pixel % p.tile_cols;
    if (pixel >= p.tile_rows * p.tile_cols || out_row >= s.batch * s.out_height ||
        col >= s.out_width) {
      continue;
    }
    const int64_t image = out_row / s.out_height;
    const int64_t at = out_row * s.out_width + col;  // pixel index in the batch
#pragma unroll
    for (int tile = 0; tile < kTilesPerChunk; ++tile) {
      const int n = out_chunk * kOutChunk + tile * 8 + 2 * q;
      if (n >= n_total) continue;
      float v0 = acc[tile][2 * half], v1 = acc[tile][2 * half + 1];
      if (t.bias != nullptr) {
        v0 += to_float(t.bias[n]);
        if (n + 1 < n_total) v1 += to_float(t.bias[n + 1]);
      }
      if (kChannelsLast && n_total % 2 == 0) {
        store_pair<T>(t.y + at * n_total + n, v0, v1);
      } else if (kChannelsLast) {
        t.y[at * n_total + n] = from_float<T>(v0);
        if (n + 1 < n_total) t.y[at * n_total + n + 1] = from_float<T>(v1);
      } else {
        const int64_t base = (image * n_total + n) * plane + (at - image * plane);
        t.y[base] = from_float<T>(v0);
        if (n + 1 < n_total) t.y[base + plane] = from_float<T>(v1);
      }
    }
  }
}

// Phase 2: the output of the tile from the shared intermediate.
template <typename T, bool kChannelsLast, Tf32Mode kMode>
__device__ __forceinline__ void compute_output(const FusedConvTensors<T>& t,
                                               const FusedConvShape& s, const FusedConvPlan& p,
                                               int64_t out_row0, int out_col0,
                                               int mid_col0, const unsigned char* zeros,
                                               const unsigned char* mid, unsigned char* stages) {
  constexpr int kRowBytes = kRankChunk * static_cast<int>(sizeof(T)) + kRowPadBytes;
  constexpr int kMaxKSteps = kRankChunk * static_cast<int>(sizeof(T)) / kMmaStepBytes;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;

  // This lane's A row is tile pixel `pixel`; tap kj reads intermediate slot slot0 + kj * dil2.
  const int out_pixels = p.tile_rows * p.tile_cols;
  const bool warp_active = warp * 16 < out_pixels;
  const int pixel = warp * 16 + (lane & 15);
  const bool pixel_valid = pixel < out_pixels;
  const int tile_col = pixel % p.tile_cols;
  const int slot0 = (pixel / p.tile_cols) * p.mid_cols + tile_col * s.stride2;
  const int mid_col = mid_col0 + tile_col * s.stride2;
  const int a_half = a_lane_half_bytes(lane);
  const int b_offset = b_lane_offset_bytes(lane, kRowBytes);

  const int rank_chunks = p.packed_rank_cols / kRankChunk;
  const int steps_per_out_chunk = s.kw2 * rank_chunks;
  const int steps = p.out_chunks * steps_per_out_chunk;
  const auto stage_at = [&](int step) { return stages + (step & 1) * p.weight2_stage_bytes; };
  const auto load_stage = [&](int step) {
    const int within = step % steps_per_out_chunk;
    load_weight2_stage<T>(stage_at(step), t.weight2_packed, s, p, step / steps_per_out_chunk,
                          within / rank_chunks, within % rank_chunks);
    cp_async_commit();
  };

  load_stage(0);
  float acc[kTilesPerChunk][4];
  zero(acc);
  for (int step = 0; step < steps; ++step) {
    const int out_chunk = step / steps_per_out_chunk;
    const int within = step % steps_per_out_chunk;
    const int kj = within / rank_chunks, rank_chunk = within % rank_chunks;
    cp_async_wait_all();
    __syncthreads();
    if (step + 1 < steps) load_stage(step + 1);
    if (warp_active) {
      const int col = mid_col + kj * s.dil2;
      const bool a_valid = pixel_valid && col >= 0 && col < s.mid_width;
      const unsigned char* a_row =
          a_valid ? mid + (slot0 + kj * s.dil2) * p.mid_stride +
                        rank_chunk * kRankChunk * static_cast<int>(sizeof(T))
                  : zeros;
      const int a_step_bytes = a_valid ? kMmaStepBytes : 0;
      const uint32_t a_address = shared_address(a_row + a_half);
      const uint32_t weight2 = shared_address(stage_at(step)) + b_offset;
      const int k_steps = min(kRankChunk, p.rank_pad - rank_chunk * kRankChunk) *
                          static_cast<int>(sizeof(T)) / kMmaStepBytes;
      const int outs = min(kOutChunk, s.out_channels - out_chunk * kOutChunk);
      for (int k = 0; k < kMaxKSteps && k < k_steps; ++k) {
        mma_row_of_tiles<T, kMode>(acc, a_address + k * a_step_bytes, weight2 + k * kMmaStepBytes,
                                   16 * kRowBytes, (outs + 15) / 16);
      }
    }
    if (within == steps_per_out_chunk - 1) {
      if (warp_active) {
        store_output<T, kChannelsLast>(acc, t, s, p, out_row0, out_col0, out_chunk);
      }
      zero(acc);
    }
  }
}

template <typename T, bool kChannelsLast, Tf32Mode kMode>
__global__ void __launch_bounds__(kFusedThreads, 2)
    lowrank_conv2d_fused_kernel(const FusedConvTensors<T> t, const FusedConvShape s,
                                const FusedConvPlan p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bf16 mma.sync and cp.async need sm_80; the launcher never selects this kernel below it.
  __trap();
#else
  extern __shared__ __align__(16) unsigned char smem[];
  const int col_tile = static_cast<int>(blockIdx.x % p.col_tiles);
  const int64_t out_row0 = blockIdx.x / p.col_tiles * p.tile_rows;  // image * out_height + row
  const int out_col0 = col_tile * p.tile_cols;
  const int mid_col0 = out_col0 * s.stride2 - s.pad2;

  unsigned char* const zeros = smem;  // read by the first barrier's readers, written before it
  if (threadIdx.x < 8) reinterpret_cast<uint32_t*>(zeros)[threadIdx.x] = 0u;
  unsigned char* const mid = smem + p.mid_offset;
  unsigned char* const stages = smem + p.stage_offset;

  compute_intermediate<T, kChannelsLast, kMode>(t, s, p, out_row0, mid_col0, zeros, mid, stages);
  __syncthreads();  // the intermediate is complete and the staging buffers are free
  compute_output<T, kChannelsLast, kMode>(t, s, p, out_row0, out_col0, mid_col0, zeros, mid,
                                          stages);
#endif
}

// Both weights into the kernel's zero-padded layout (lowrank_conv2d_fused.h), one grid-stride
// pass over the packed elements.
template <typename T>
__global__ void pack_lowrank_weights_kernel(const T* __restrict__ weight1,
                                            const T* __restrict__ weight2,
                                            const WeightStrides strides, const FusedConvShape s,
                                            const FusedConvPlan p, T* __restrict__ weight1_packed,
                                            T* __restrict__ weight2_packed) {
  const int64_t total1 = packed_weight1_elements(s, p);
  const int64_t total = total1 + packed_weight2_elements(s, p);
  const int taps = s.kh1 * s.kw1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < total1) {
      // [rank_pad][channel_chunks][taps][channel_chunk]
      int64_t rest = i;
      const int within = static_cast<int>(rest % p.channel_chunk);
      rest /= p.channel_chunk;
      const int tap = static_cast<int>(rest % taps);
      rest /= taps;
      const int chunk = static_cast<int>(rest % p.channel_chunks);
      const int64_t rank = rest / p.channel_chunks;
      const int64_t c = static_cast<int64_t>(chunk) * p.channel_chunk + within;
      const int64_t* st = strides.weight1;
      weight1_packed[i] = rank < s.rank && c < s.channels
                              ? weight1[rank * st[0] + c * st[1] + (tap / s.kw1) * st[2] +
                                        (tap % s.kw1) * st[3]]
                              : from_float<T>(0.f);
    } else {
      // [out_chunks * kOutChunk][kw2][packed_rank_cols]
      int64_t rest = i - total1;
      const int64_t rank = rest % p.packed_rank_cols;
      rest /= p.packed_rank_cols;
      const int64_t kj = rest % s.kw2;
      const int64_t n = rest / s.kw2;
      const int64_t* st = strides.weight2;
      weight2_packed[i - total1] = n < s.out_channels && rank < s.rank
                                       ? weight2[n * st[0] + rank * st[1] + kj * st[3]]
                                       : from_float<T>(0.f);
    }
  }
}

}  // namespace fused

}  // namespace trp::cuda
