// The fused low-rank convolution kernels for __nv_bfloat16 (both layouts).
#include "trp/conv/lowrank_conv2d_fused_launch.cuh"

namespace trp::cuda {

template cudaError_t launch_pack_lowrank_weights<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const WeightStrides&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       __nv_bfloat16*, __nv_bfloat16*, cudaStream_t);
template cudaError_t launch_lowrank_conv2d_fused<__nv_bfloat16>(const FusedConvTensors<__nv_bfloat16>&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       Tf32Mode, cudaStream_t);

}  // namespace trp::cuda
