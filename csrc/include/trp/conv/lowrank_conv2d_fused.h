// The fused low-rank convolution kernel (csrc/include/trp/conv/lowrank_conv2d_fused.cuh) as its
// launcher sees it: the problem, the tiling plan (host code, shared with the kernel) and the
// launch functions. Plain C++: no torch, no device code.
//
// Both TRP schemes are one computation here: a kh1 x kw1 convolution C -> r with a 2-D
// geometry, followed by a 1 x kw2 convolution r -> N along the width (vertical stride 1, no
// vertical padding). `channel` is kw2 = 1; `spatial` is kw1 = 1 with horizontal stride 1, no
// horizontal padding and dilation 1 in the first conv (conv_geometry.h).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace trp::cuda {

struct FusedConvShape {
  int64_t batch;
  int channels, height, width;  // x
  int rank, out_channels;       // r, N
  int kh1, kw1;                 // first conv
  int stride1[2], pad1[2], dil1[2];
  int kw2, stride2, pad2, dil2;  // second conv, along the width
  int mid_width;                 // width of the r-channel intermediate; its height is out_height
  int out_height, out_width;
  bool channels_last;  // layout of x and of the output (the weights are packed, see below)
};

// fp32 operands go through the tf32 tensor cores: kSingle rounds them to tf32 (what cuDNN does
// when torch.backends.cudnn.allow_tf32 is set, ~1e-3 relative error), kSplit3 is 3xTF32
// (a = big + small, a*b ~ big*big + big*small + small*big), accurate to about fp32.
enum class Tf32Mode : int { kSingle = 0, kSplit3 = 1 };

// Block shape. A block computes tile_rows x tile_cols output pixels: tile_rows consecutive
// output rows of the batch (image-major, so a tile may span images and small images still fill
// it), tile_cols columns. First the intermediate for the tile_rows x mid_cols pixels they need
// (the second conv's halo included) goes into shared memory, then the output, 64 channels at a
// time. Eight warps each own 16 pixel rows of a GEMM, so a tile has at most 128 intermediate
// and 128 output pixels. The input window has room for kh1 input rows per tile row (what a
// tile crossing images needs; a tile inside one image uses the rows it spans, see
// WindowRows in lowrank_conv2d_fused.cuh).
constexpr int kFusedThreads = 256;
constexpr int kMaxTilePixels = 128;
// Ranks per pass of the first GEMM and output channels per step of the second: a warp's
// 16 x 64 float accumulator tile is 32 registers per lane.
constexpr int kRankChunk = 64;
constexpr int kOutChunk = 64;
// The input window of a tile is staged through registers, 16 bytes per unit, two units per
// pixel; this bounds the window to kFusedThreads * kPatchUnitsPerThread / 2 pixels.
constexpr int kPatchUnitsPerThread = 4;
constexpr int kMaxPatchPixels = kFusedThreads * kPatchUnitsPerThread / 2;
// Shared-memory row strides are an odd number of 16-byte words, so the 8 rows an ldmatrix
// reads fall in 8 different bank groups: a row of 32 bytes of K plus 16 bytes of padding.
constexpr int kRowPadBytes = 16;
constexpr int kPatchPixelBytes = 32 + kRowPadBytes;

struct FusedConvPlan {
  int tile_rows, tile_cols;
  int mid_cols;                  // intermediate columns per tile row
  int patch_rows, patch_cols;    // input window of a tile (room for tile_rows * kh1 rows)
  int channel_chunk;             // channels per step of the first GEMM (32 bytes of them)
  int channel_chunks;
  int rank_pad;                  // r rounded up to 16
  int rank_passes;               // first-GEMM passes of kRankChunk ranks
  int packed_rank_cols;          // r rounded up to kRankChunk (row length of packed weight2)
  int out_chunks;                // N / kOutChunk, rounded up
  int64_t row_tiles, col_tiles, blocks;
  int mid_offset, mid_stride;    // shared-memory layout, bytes
  int stage_offset, patch_bytes, weight1_stage_bytes, weight2_stage_bytes;
  int smem_bytes;
};

struct FusedDeviceLimits {
  int sm_count;
  int max_smem_per_block;  // the opt-in maximum
};

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }
inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tiles the problem for the fused kernel; false when the kernel cannot take it (the caller then
// uses another implementation). element_bytes: 4 (fp32) or 2 (fp16, bf16).
inline bool plan_fused_conv(const FusedConvShape& s, int element_bytes,
                            const FusedDeviceLimits& device, FusedConvPlan* plan) {
  if (s.rank < 1 || s.out_channels < 1 || s.batch < 1) return false;
  FusedConvPlan p{};
  const auto mid_cols_for = [&](int cols) { return (cols - 1) * s.stride2 + (s.kw2 - 1) * s.dil2 + 1; };
  const auto patch_cols_for = [&](int mid_cols) {
    return (mid_cols - 1) * s.stride1[1] + (s.kw1 - 1) * s.dil1[1] + 1;
  };
  const auto fits = [&](int rows, int cols) {
    const int mid_cols = mid_cols_for(cols);
    return rows * mid_cols <= kMaxTilePixels &&
           rows * s.kh1 * patch_cols_for(mid_cols) <= kMaxPatchPixels;
  };
  // The widest column tile that fits, then as many rows as fit.
  int cols = std::min(s.out_width, kMaxTilePixels);
  while (cols > 1 && !fits(1, cols)) --cols;
  if (!fits(1, cols)) return false;
  cols = static_cast<int>(div_up(s.out_width, div_up(s.out_width, cols)));  // even tiles
  const int64_t total_rows = s.batch * s.out_height;
  int rows = static_cast<int>(std::min<int64_t>(total_rows, kMaxTilePixels / mid_cols_for(cols)));
  while (rows > 1 && !fits(rows, cols)) --rows;
  // Small problems: shorter tiles, so that every multiprocessor gets a block.
  const int64_t col_tiles = div_up(s.out_width, cols);
  if (div_up(total_rows, rows) * col_tiles < device.sm_count) {
    rows = static_cast<int>(std::clamp<int64_t>(div_up(total_rows * col_tiles, device.sm_count),
                                                1, rows));
  }
  rows = static_cast<int>(div_up(total_rows, div_up(total_rows, rows)));

  p.tile_rows = rows;
  p.tile_cols = cols;
  p.mid_cols = mid_cols_for(cols);
  p.patch_rows = rows * s.kh1;
  p.patch_cols = patch_cols_for(p.mid_cols);
  p.channel_chunk = 32 / element_bytes;
  p.channel_chunks = static_cast<int>(div_up(s.channels, p.channel_chunk));
  p.rank_pad = round_up(s.rank, 16);
  p.rank_passes = static_cast<int>(div_up(p.rank_pad, kRankChunk));
  p.packed_rank_cols = round_up(p.rank_pad, kRankChunk);
  p.out_chunks = static_cast<int>(div_up(s.out_channels, kOutChunk));
  p.row_tiles = div_up(total_rows, rows);
  p.col_tiles = col_tiles;
  p.blocks = p.row_tiles * p.col_tiles;
  if (p.blocks > INT32_MAX) return false;

  const int taps = s.kh1 * s.kw1;
  const int mid_rows = round_up(rows * p.mid_cols, 16);
  p.mid_offset = 32;  // the first 32 bytes hold zeros: the rows of padded or missing pixels
  p.mid_stride = p.rank_pad * element_bytes + kRowPadBytes;
  p.stage_offset = p.mid_offset + mid_rows * p.mid_stride;
  p.patch_bytes = p.patch_rows * p.patch_cols * kPatchPixelBytes;
  p.weight1_stage_bytes = std::min(kRankChunk, p.rank_pad) * (taps * 32 + kRowPadBytes);
  p.weight2_stage_bytes = kOutChunk * (kRankChunk * element_bytes + kRowPadBytes);
  const int stages = 2 * std::max(p.patch_bytes + p.weight1_stage_bytes, p.weight2_stage_bytes);
  p.smem_bytes = p.stage_offset + stages;
  if (p.smem_bytes > device.max_smem_per_block) return false;
  *plan = p;
  return true;
}

// Weights in the kernel's layout, zero-padded so that every tile load is whole and aligned
// (constexpr: the packing kernel calls them too, through --expt-relaxed-constexpr):
// weight1 as [rank_pad][channel_chunks][kh1 * kw1][channel_chunk], weight2 as
// [out_chunks * kOutChunk][kw2][packed_rank_cols].
constexpr int64_t packed_weight1_elements(const FusedConvShape& s, const FusedConvPlan& p) {
  return static_cast<int64_t>(p.rank_pad) * p.channel_chunks * s.kh1 * s.kw1 * p.channel_chunk;
}
constexpr int64_t packed_weight2_elements(const FusedConvShape& s, const FusedConvPlan& p) {
  return static_cast<int64_t>(p.out_chunks) * kOutChunk * s.kw2 * p.packed_rank_cols;
}

template <typename T>
struct FusedConvTensors {
  const T* x;
  const T* weight1_packed;
  const T* weight2_packed;
  const T* bias;  // may be null
  T* y;
};

// Strides (in elements) of the 4-D weight tensors as given.
struct WeightStrides {
  int64_t weight1[4];
  int64_t weight2[4];
};

// T: float, __half or __nv_bfloat16 (one instantiation file each under csrc/cuda/). Both run on
// `stream` without synchronising; tf32_mode matters for float only.
template <typename T>
cudaError_t launch_pack_lowrank_weights(const T* weight1, const T* weight2,
                                        const WeightStrides& strides, const FusedConvShape& s,
                                        const FusedConvPlan& p, T* weight1_packed,
                                        T* weight2_packed, cudaStream_t stream);

template <typename T>
cudaError_t launch_lowrank_conv2d_fused(const FusedConvTensors<T>& tensors,
                                        const FusedConvShape& s, const FusedConvPlan& p,
                                        Tf32Mode tf32_mode, cudaStream_t stream);

}  // namespace trp::cuda
