#include "trp/cuda_utils.cuh"
#include "trp/matrix_checks.h"

namespace trp::cuda {
namespace {

constexpr int kThreads = 256;

// One block per matrix (grid-stride over the batch), a block-wide OR of !isfinite.
template <typename T>
__global__ void nonfinite_flags_kernel(const T* __restrict__ data, int64_t batch, int64_t elems,
                                       int32_t* __restrict__ flags) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const T* m = data + b * elems;
    int bad = 0;
    for (int64_t i = threadIdx.x; i < elems; i += blockDim.x) bad |= !isfinite(m[i]);
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) flags[b] = bad;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_nonfinite_flags(const T* data, int64_t batch, int64_t elems, int32_t* flags,
                                   cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const unsigned int blocks = static_cast<unsigned int>(batch < 65535 ? batch : 65535);
  nonfinite_flags_kernel<T><<<blocks, kThreads, 0, stream>>>(data, batch, elems, flags);
  return TRP_LAUNCH_STATUS();
}

template cudaError_t launch_nonfinite_flags<float>(const float*, int64_t, int64_t, int32_t*,
                                                   cudaStream_t);
template cudaError_t launch_nonfinite_flags<double>(const double*, int64_t, int64_t, int32_t*,
                                                    cudaStream_t);

}  // namespace trp::cuda
