// The blocked path's last steps: the spectrum (order, noise floor, singular values, rank) and
// the factors U, S, V from the eigenvectors, with the completion of kept zero singular values.
// The fused kernel (fused_svd.cu) does the same steps with the same device functions.
#include <cmath>

#include "trp/cuda_utils.cuh"
#include "trp/kernel_launch.h"
#include "trp/svd/orthonormal_completion.cuh"
#include "trp/svd/svd_cuda.h"
#include "trp/svd/svd_scaling.cuh"
#include "trp/svd/svd_spectrum.cuh"

namespace trp::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned int kMaxGrid = 65535;

__global__ void __launch_bounds__(kThreads) spectrum_kernel(const SpectrumArgs args) {
  __shared__ int64_t rank;
  for (int64_t b = blockIdx.x; b < args.batch; b += gridDim.x) {
    __syncthreads();  // `rank` of the previous matrix has been read
    const int exponent = scale_exponent(max_abs_from_bits(args.max_bits[b]));
    const int64_t r = order_spectrum(args.g + b * args.g_batch_stride, args.g_ld + 1, args.k,
                                     args.long_dim, args.flush_noise, args.nonfinite[b] != 0,
                                     args.rule, exponent, args.order + b * args.k,
                                     args.sigma + b * args.k, &rank);
    if (threadIdx.x == 0) args.rank[b] = r;
  }
}

// One thread per entry of the short factor (k x k) and the long factor (L x k), in that order.
template <typename F>
__global__ void __launch_bounds__(kThreads) factors_kernel(const FactorArgs<F> args) {
  const int64_t m = args.m, n = args.n;
  const bool wide = m <= n;
  const int64_t k = wide ? m : n, L = wide ? n : m;
  const int64_t per_matrix = (k + L) * k;
  const int64_t total = args.batch * per_matrix;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = e / per_matrix;
    const int64_t within = e - b * per_matrix;
    const int64_t row = within / k, j = within - row * k;
    const int64_t r = args.rank[b];
    const int exponent = scale_exponent(max_abs_from_bits(args.max_bits[b]));
    const double sigma = args.sigma[b * k + j];
    const int32_t c = args.order[b * k + j];
    const bool is_short = row < k;
    double value, s_true;
    if (r < 0) {
      value = s_true = NAN;
    } else if (j >= r) {
      value = s_true = 0.0;
    } else {
      s_true = ldexp(sigma, exponent);
      if (is_short) {
        value = args.short_vecs[b * args.short_batch_stride + row * args.short_ld + c];
      } else {
        // zero singular values get their vector from the completion kernel
        const int64_t at = b * args.long_batch_stride + (row - k) * args.long_ld + c;
        value = sigma > 0.0 ? args.long_vecs[at] / sigma : 0.0;
      }
    }
    const int64_t at = (is_short ? row : row - k) * k + j;
    const bool in_u = is_short == wide;  // U is the short side of a wide matrix
    F* factor = in_u ? args.u + b * m * k : args.v + b * n * k;
    factor[at] = static_cast<F>(value);
    if (in_u && args.us) args.us[b * m * k + at] = static_cast<F>(value * s_true);
    if (row == 0 && args.s) args.s[b * k + j] = static_cast<F>(s_true);
  }
}

template <typename F>
__global__ void __launch_bounds__(kThreads) completion_kernel(const FactorArgs<F> args) {
  __shared__ double reduce_v[kThreads / kWarpSize];
  __shared__ int64_t reduce_i[kThreads / kWarpSize];
  const int64_t m = args.m, n = args.n;
  const bool wide = m <= n;
  const int64_t k = wide ? m : n, L = wide ? n : m;
  for (int64_t b = blockIdx.x; b < args.batch; b += gridDim.x) {
    const int64_t r = args.rank[b];
    const double* sigma = args.sigma + b * k;
    int64_t positive = 0;  // the kept singular values before the first zero
    while (positive < r && sigma[positive] > 0.0) ++positive;
    if (positive >= r) continue;
    double* scratch = args.scratch + b * (2 * L + k);
    const CompletionScratch s{scratch, scratch + L, scratch + 2 * L, reduce_v, reduce_i};
    F* long_factor = wide ? args.v + b * n * k : args.u + b * m * k;
    complete_orthonormal_columns(long_factor, k, L, positive, r, s);
  }
}

}  // namespace

cudaError_t launch_spectrum(const SpectrumArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.k == 0) return cudaSuccess;
  const auto grid = static_cast<unsigned int>(args.batch < kMaxGrid ? args.batch : kMaxGrid);
  TRP_LAUNCH(spectrum_kernel, grid, kThreads, 0, stream)(args);
  return TRP_LAUNCH_STATUS();
}

template <typename F>
cudaError_t launch_svd_factors(const FactorArgs<F>& args, cudaStream_t stream) {
  const int64_t k = args.m < args.n ? args.m : args.n, L = args.m < args.n ? args.n : args.m;
  if (args.batch == 0 || k == 0) return cudaSuccess;
  const unsigned int blocks = grid_for(args.batch * (k + L) * k, kThreads);
  TRP_LAUNCH(factors_kernel<F>, blocks, kThreads, 0, stream)(args);
  TRP_CUDA_TRY(TRP_LAUNCH_STATUS());
  const auto grid = static_cast<unsigned int>(args.batch < kMaxGrid ? args.batch : kMaxGrid);
  TRP_LAUNCH(completion_kernel<F>, grid, kThreads, 0, stream)(args);
  return TRP_LAUNCH_STATUS();
}

template cudaError_t launch_svd_factors<float>(const FactorArgs<float>&, cudaStream_t);
template cudaError_t launch_svd_factors<double>(const FactorArgs<double>&, cudaStream_t);

}  // namespace trp::cuda
