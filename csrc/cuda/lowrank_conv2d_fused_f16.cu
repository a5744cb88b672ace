// The fused low-rank convolution kernels for __half (both layouts).
#include "trp/conv/lowrank_conv2d_fused_launch.cuh"

namespace trp::cuda {

template cudaError_t launch_pack_lowrank_weights<__half>(const __half*, const __half*, const WeightStrides&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       __half*, __half*, cudaStream_t);
template cudaError_t launch_lowrank_conv2d_fused<__half>(const FusedConvTensors<__half>&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       Tf32Mode, cudaStream_t);

}  // namespace trp::cuda
