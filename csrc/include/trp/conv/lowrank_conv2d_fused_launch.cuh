// Launch functions of the fused low-rank convolution (declared in lowrank_conv2d_fused.h);
// included by the per-element-type instantiation files csrc/cuda/lowrank_conv2d_fused_*.cu.
#pragma once

#include <type_traits>

#include "trp/cuda_utils.cuh"
#include "trp/dynamic_smem.h"
#include "trp/kernel_launch.h"
#include "trp/conv/lowrank_conv2d_fused.cuh"

namespace trp::cuda {
namespace fused {

template <typename T, bool kChannelsLast, Tf32Mode kMode>
cudaError_t launch_variant(const FusedConvTensors<T>& t, const FusedConvShape& s,
                           const FusedConvPlan& p, cudaStream_t stream) {
  const auto kernel = lowrank_conv2d_fused_kernel<T, kChannelsLast, kMode>;
  TRP_CUDA_TRY(allow_dynamic_smem(kernel, p.smem_bytes));
  const auto blocks = static_cast<unsigned int>(p.blocks);
  TRP_LAUNCH(kernel, blocks, kFusedThreads, p.smem_bytes, stream)(t, s, p);
  return TRP_LAUNCH_STATUS();
}

}  // namespace fused

template <typename T>
cudaError_t launch_pack_lowrank_weights(const T* weight1, const T* weight2,
                                        const WeightStrides& strides, const FusedConvShape& s,
                                        const FusedConvPlan& p, T* weight1_packed,
                                        T* weight2_packed, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = packed_weight1_elements(s, p) + packed_weight2_elements(s, p);
  const unsigned int blocks = grid_for(total, kThreads);
  TRP_LAUNCH(fused::pack_lowrank_weights_kernel<T>, blocks, kThreads, 0, stream)(
      weight1, weight2, strides, s, p, weight1_packed, weight2_packed);
  return TRP_LAUNCH_STATUS();
}

template <typename T>
cudaError_t launch_lowrank_conv2d_fused(const FusedConvTensors<T>& tensors,
                                        const FusedConvShape& s, const FusedConvPlan& p,
                                        Tf32Mode tf32_mode, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (tf32_mode == Tf32Mode::kSplit3) {
      return s.channels_last
                 ? fused::launch_variant<T, true, Tf32Mode::kSplit3>(tensors, s, p, stream)
                 : fused::launch_variant<T, false, Tf32Mode::kSplit3>(tensors, s, p, stream);
    }
  }
  return s.channels_last ? fused::launch_variant<T, true, Tf32Mode::kSingle>(tensors, s, p, stream)
                         : fused::launch_variant<T, false, Tf32Mode::kSingle>(tensors, s, p, stream);
}

}  // namespace trp::cuda
