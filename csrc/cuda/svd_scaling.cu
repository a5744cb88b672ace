// The power-of-two scaling of the blocked path's inputs (trp/svd/svd_scaling.cuh): a scan for the
// largest finite magnitude and for non-finite values, then the scaled float64 copy that the
// cuBLAS GEMMs read.
#include "trp/block_reduce.cuh"
#include "trp/cuda_utils.cuh"
#include "trp/kernel_launch.h"
#include "trp/svd/svd_cuda.h"
#include "trp/svd/svd_scaling.cuh"

namespace trp::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kScanChunk = kThreads * 16;  // elements of one matrix per scan block
constexpr unsigned int kMaxGridY = 65535;

// Block (x, y) scans elements [x * kScanChunk, (x + 1) * kScanChunk) of the matrices
// y, y + gridDim.y, ...
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scale_scan_kernel(const T* __restrict__ w, int64_t batch, int64_t elems,
                      unsigned long long* __restrict__ max_bits, int32_t* __restrict__ nonfinite) {
  __shared__ double scratch[kThreads / kWarpSize];
  const int64_t begin = blockIdx.x * kScanChunk;
  const int64_t end = begin + kScanChunk < elems ? begin + kScanChunk : elems;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* m = w + b * elems;
    double local = 0.0;
    int bad = 0;
    for (int64_t e = begin + threadIdx.x; e < end; e += kThreads) {
      const double x = static_cast<double>(m[e]);
      if (isfinite(x)) {
        local = fmax(local, fabs(x));
      } else {
        bad = 1;
      }
    }
    bad = __syncthreads_or(bad);
    const double largest = block_max(local, scratch);
    if (threadIdx.x == 0) {
      if (largest > 0.0) atomicMax(max_bits + b, max_abs_to_bits(largest));
      if (bad) atomicOr(nonfinite + b, 1);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    scale_to_double_kernel(const T* __restrict__ w, int64_t batch, int64_t elems,
                           const unsigned long long* __restrict__ max_bits,
                           double* __restrict__ out) {
  const int64_t total = batch * elems;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int exponent = scale_exponent(max_abs_from_bits(max_bits[e / elems]));
    out[e] = ldexp(static_cast<double>(w[e]), -exponent);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_scale_scan(const T* w, int64_t batch, int64_t elems,
                              unsigned long long* max_bits, int32_t* nonfinite,
                              cudaStream_t stream) {
  if (batch == 0 || elems == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(ceil_div(elems, kScanChunk)),
                  static_cast<unsigned int>(batch < kMaxGridY ? batch : kMaxGridY));
  TRP_LAUNCH(scale_scan_kernel<T>, grid, kThreads, 0, stream)(w, batch, elems, max_bits,
                                                               nonfinite);
  return TRP_LAUNCH_STATUS();
}

template <typename T>
cudaError_t launch_scale_to_double(const T* w, int64_t batch, int64_t elems,
                                   const unsigned long long* max_bits, double* out,
                                   cudaStream_t stream) {
  if (batch == 0 || elems == 0) return cudaSuccess;
  const unsigned int blocks = grid_for(batch * elems, kThreads);
  TRP_LAUNCH(scale_to_double_kernel<T>, blocks, kThreads, 0, stream)(
      w, batch, elems, max_bits, out);
  return TRP_LAUNCH_STATUS();
}

template cudaError_t launch_scale_scan<float>(const float*, int64_t, int64_t, unsigned long long*,
                                              int32_t*, cudaStream_t);
template cudaError_t launch_scale_scan<double>(const double*, int64_t, int64_t,
                                               unsigned long long*, int32_t*, cudaStream_t);
template cudaError_t launch_scale_to_double<float>(const float*, int64_t, int64_t,
                                                   const unsigned long long*, double*,
                                                   cudaStream_t);
template cudaError_t launch_scale_to_double<double>(const double*, int64_t, int64_t,
                                                    const unsigned long long*, double*,
                                                    cudaStream_t);

}  // namespace trp::cuda
