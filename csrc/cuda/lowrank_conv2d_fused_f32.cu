// The fused low-rank convolution kernels for float (both layouts, both tf32 modes).
#include "trp/conv/lowrank_conv2d_fused_launch.cuh"

namespace trp::cuda {

template cudaError_t launch_pack_lowrank_weights<float>(const float*, const float*, const WeightStrides&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       float*, float*, cudaStream_t);
template cudaError_t launch_lowrank_conv2d_fused<float>(const FusedConvTensors<float>&,
                                                       const FusedConvShape&, const FusedConvPlan&,
                                                       Tf32Mode, cudaStream_t);

}  // namespace trp::cuda
