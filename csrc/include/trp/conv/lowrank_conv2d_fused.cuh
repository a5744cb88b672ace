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
//
// The warp-level arithmetic lives in lowrank_conv2d_fused_mma.cuh, the staging of the input
// window and the weights in lowrank_conv2d_fused_staging.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "trp/conv/lowrank_conv2d_fused.h"
#include "trp/conv/lowrank_conv2d_fused_mma.cuh"
#include "trp/conv/lowrank_conv2d_fused_staging.cuh"
#include "trp/conv/mma_primitives.cuh"
#include "trp/cuda_utils.cuh"
#include "trp/kernel_launch.h"

namespace trp::cuda {
namespace fused {

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
  TRP_DYNAMIC_SHARED(smem);
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
