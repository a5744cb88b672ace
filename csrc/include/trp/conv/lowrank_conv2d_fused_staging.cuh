// How the fused low-rank convolution kernel (lowrank_conv2d_fused.cuh) stages its operands in
// shared memory: the input window of a tile (global -> registers -> shared) and the packed
// weight stages (cp.async).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "trp/conv/lowrank_conv2d_fused.h"
#include "trp/conv/lowrank_conv2d_fused_mma.cuh"
#include "trp/conv/mma_primitives.cuh"

namespace trp::cuda {
namespace fused {

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

}  // namespace fused
}  // namespace trp::cuda
