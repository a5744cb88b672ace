// The fused SVD for k = min(m, n) <= 64: one thread block per matrix does the whole op in one
// launch -- scaling and finiteness scan, float64 Gram matrix, Jacobi eigensolver, spectrum and
// rank, both factors, completion, and for lowrank_project the two products -- so a call costs
// one kernel launch (the ResNet-20/56 channel layers and the smallest spatial ones live here).
//
// float32 inputs: one pass, as the CPU kernel: G = A A^T in float64 from the exact float32
// values, eigenvalues accurate to ~(L + k) eps64 lambda_1, noise floor flushed to zero; the
// eigenvectors are kept in float32 (float32 outputs cannot tell, and they are the larger part
// of a Jacobi round's shared-memory traffic).
// float64 inputs: a second pass makes the small singular values accurate (docs/cuda_svd.md):
// with Q1 from the first pass, Y = A^T Q1 has nearly orthogonal columns, and the Jacobi
// eigensolver of Y^T Y computed from Y (not from G) resolves each singular value to high
// relative accuracy, as a one-sided Jacobi SVD of Y would. U = Q1 Q2, V = Y Q2 / s.
//
// The shared-memory layout: trp/svd/fused_svd_layout.cuh; the block-wide products:
// trp/svd/fused_svd_products.cuh.
#include <cmath>
#include <type_traits>

#include "trp/block_reduce.cuh"
#include "trp/cuda_utils.cuh"
#include "trp/dynamic_smem.h"
#include "trp/kernel_launch.h"
#include "trp/svd/fused_svd_layout.cuh"
#include "trp/svd/fused_svd_products.cuh"
#include "trp/svd/jacobi_eigen.cuh"
#include "trp/svd/orthonormal_completion.cuh"
#include "trp/svd/svd_cuda.h"
#include "trp/svd/svd_scaling.cuh"
#include "trp/svd/svd_spectrum.cuh"
#include "trp/svd/warm_start.cuh"

namespace trp::cuda {
namespace fused_svd {
namespace {

constexpr int kMaxSweeps = 32;  // adversarial spectra converge in <= 20 (docs)

template <typename T, typename F>
__device__ void write_nonfinite(const FusedSvdArgs<T, F>& args, int64_t b, int k) {
  const int64_t m = args.m, n = args.n;
  const F nan_f = static_cast<F>(NAN);
  for (int64_t e = threadIdx.x; e < m * k; e += kThreads) args.u[b * m * k + e] = nan_f;
  for (int64_t e = threadIdx.x; e < n * k; e += kThreads) args.v[b * n * k + e] = nan_f;
  if (args.s) {
    for (int64_t e = threadIdx.x; e < k; e += kThreads) args.s[b * k + e] = nan_f;
  }
  if (args.basis) {
    for (int64_t e = threadIdx.x; e < k * k; e += kThreads) args.basis[b * k * k + e] = NAN;
  }
  if (args.low) {
    const T nan_t = static_cast<T>(NAN);
    for (int64_t e = threadIdx.x; e < m * n; e += kThreads) {
      args.low[b * m * n + e] = nan_t;
      args.subgrad[b * m * n + e] = nan_t;
    }
  }
  if (threadIdx.x == 0) args.rank[b] = -1;
}

// One block per SM is the design point (its shared memory is ~90-120 KB), so the register
// budget is not capped for a second one.
template <typename T, typename F>
__global__ void __launch_bounds__(kThreads, 1)
    fused_svd_kernel(const FusedSvdArgs<T, F> args) {
  constexpr bool kRefine = std::is_same_v<T, double>;
  // float32 inputs keep their eigenvectors in float32 (float32 outputs cannot tell; see docs).
  using V = std::conditional_t<kRefine, double, float>;
  TRP_DYNAMIC_SHARED(smem);
  const int64_t b = blockIdx.x;
  const int64_t m = args.m, n = args.n;
  const bool wide = m <= n;
  const int k = static_cast<int>(wide ? m : n);
  const int64_t L = wide ? n : m;
  const FusedShared<V> sh(smem, FusedLayout(k, kRefine, sizeof(V), args.start != nullptr));
  const T* w = args.w + b * m * n;

  // 1. Power-of-two scale and finiteness (trp/svd/svd_scaling.cuh).
  double local_max = 0.0;
  int bad = 0;
  for (int64_t e = threadIdx.x; e < m * n; e += kThreads) {
    const double x = static_cast<double>(w[e]);
    if (isfinite(x)) {
      local_max = fmax(local_max, fabs(x));
    } else {
      bad = 1;
    }
  }
  if (__syncthreads_or(bad)) {
    write_nonfinite(args, b, k);
    return;
  }
  const int exponent = scale_exponent(block_max(local_max, sh.reduce_v));
  const Oriented<T> a{w, wide ? n : 1, wide ? 1 : n, ldexp(1.0, -exponent)};

  // 2. Eigen-decomposition of the Gram matrix G of the short side: from the identity, or,
  // given a usable start basis Q0, of Q0^T G Q0 with the rotations accumulated onto Q0 (a few
  // sweeps where the matrix changed little since Q0 was its eigenvectors).
  const bool warm =
      args.start != nullptr && load_start_basis(args.start + b * static_cast<int64_t>(k) * k, k, sh);
  gram_upper(a, k, L, sh.g, sh, warm ? sh.qt : nullptr);
  if (warm) {
    for (int u = threadIdx.x; u < sh.order_n * sh.order_n; u += kThreads) {
      const int c = u / sh.order_n, i = u - c * sh.order_n;
      sh.vt[c * sh.ld + i] = static_cast<V>(sh.qt[c * sh.ld + i]);
    }
  } else {
    set_identity(sh.vt, sh);
  }
  jacobi_diagonalize(sh.jacobi(sh.g, sh.vt), kMaxSweeps);

  F* short_out = (wide ? args.u : args.v) + b * k * k;
  F* long_out = (wide ? args.v : args.u) + b * L * k;
  double* completion = args.scratch + b * fused_svd_scratch_elems<T>(m, n);

  // 3. The rest, from the source of the long side, the eigenvectors that multiply it and the
  // short-side vectors (rows of shared arrays), once the eigenvalues are in sh.lambda.
  auto finish = [&](const auto& long_src, const V* long_vecs, const V* short_vecs) {
    const int64_t r = order_spectrum(sh.lambda, 1, k, L, !kRefine, false, args.rule, exponent,
                                     sh.order, sh.sigma, sh.rank);
    int positive = 0;  // the kept singular values before the first zero
    while (positive < r && sh.sigma[positive] > 0.0) ++positive;
    for (int j = threadIdx.x; j < k; j += kThreads) {
      sh.column_scale[j] = j < positive ? 1.0 / sh.sigma[j] : 0.0;
      if (args.s) args.s[b * k + j] = static_cast<F>(j < r ? ldexp(sh.sigma[j], exponent) : 0.0);
    }
    for (int e = threadIdx.x; e < k * k; e += kThreads) {
      const int i = e / k, j = e - i * k;
      const double value = static_cast<double>(short_vecs[sh.order[j] * sh.ld + i]);
      short_out[e] = static_cast<F>(j < r ? value : 0.0);
      if (args.basis) args.basis[b * k * k + e] = value;
    }
    if (threadIdx.x == 0) args.rank[b] = r;
    __syncthreads();  // column_scale
    multiply_long_side(long_src, k, L, long_vecs, sh.order, sh.column_scale, long_out, k, sh);
    if (positive < r) {
      const CompletionScratch scratch{completion, completion + L, sh.stage, sh.reduce_v,
                                      sh.reduce_i};
      complete_orthonormal_columns(long_out, k, L, positive, r, scratch);
    }
    if (args.low) {
      compose_products(a, k, L, short_vecs, sh.order, sh.sigma, exponent, static_cast<int>(r),
                       long_out, args.low + b * m * n, args.subgrad + b * m * n, sh);
    }
  };

  if constexpr (kRefine) {
    // 4. Refinement: Y = A^T Q1 (L x k, scratch), eigen-decomposition of Y^T Y (from Y).
    double* y = completion + 2 * L;
    multiply_long_side(a, k, L, sh.vt, nullptr, nullptr, y, k, sh);
    const Oriented<double> y_src{y, 1, k, 1.0};
    gram_upper(y_src, k, L, sh.g, sh);
    set_identity(sh.vt2, sh);
    jacobi_diagonalize(sh.jacobi(sh.g, sh.vt2), kMaxSweeps);
    for (int c = threadIdx.x; c < k; c += kThreads) sh.lambda[c] = sh.g[c * sh.ld + c];
    __syncthreads();
    // Short-side vectors Q1 Q2, as rows (vt_final[c][i] = sum_j vt2[c][j] vt[j][i]), into g.
    for (int e = threadIdx.x; e < sh.order_n * sh.order_n; e += kThreads) {
      const int c = e / sh.order_n, i = e - c * sh.order_n;
      double acc = 0.0;
      for (int j = 0; j < sh.order_n; ++j) acc += sh.vt2[c * sh.ld + j] * sh.vt[j * sh.ld + i];
      sh.g[c * sh.ld + i] = acc;
    }
    __syncthreads();
    finish(y_src, sh.vt2, sh.g);
  } else {
    for (int c = threadIdx.x; c < k; c += kThreads) sh.lambda[c] = sh.g[c * sh.ld + c];
    __syncthreads();
    finish(a, sh.vt, sh.vt);
  }
}

}  // namespace
}  // namespace fused_svd

template <typename T, typename F>
cudaError_t launch_fused_svd(const FusedSvdArgs<T, F>& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  const int k = static_cast<int>(args.m < args.n ? args.m : args.n);
  constexpr bool kRefine = std::is_same_v<T, double>;
  using V = std::conditional_t<kRefine, double, float>;
  auto kernel = fused_svd::fused_svd_kernel<T, F>;
  FusedSvdArgs<T, F> run = args;
  int64_t bytes = fused_svd::FusedLayout(k, kRefine, sizeof(V), run.start != nullptr).bytes;
  if (run.start != nullptr && allow_dynamic_smem(kernel, bytes) == cudaErrorInvalidValue) {
    // The warm layout's extra 50 KB do not fit this device's shared memory (float64 at k = 64
    // on an sm_80 part): solve cold.
    run.start = nullptr;
    bytes = fused_svd::FusedLayout(k, kRefine, sizeof(V), false).bytes;
  }
  TRP_CUDA_TRY(allow_dynamic_smem(kernel, bytes));
  const auto blocks = static_cast<unsigned int>(args.batch);
  TRP_LAUNCH(kernel, blocks, fused_svd::kThreads, bytes, stream)(run);
  return TRP_LAUNCH_STATUS();
}

template cudaError_t launch_fused_svd<float, float>(const FusedSvdArgs<float, float>&,
                                                    cudaStream_t);
template cudaError_t launch_fused_svd<float, double>(const FusedSvdArgs<float, double>&,
                                                     cudaStream_t);
template cudaError_t launch_fused_svd<double, double>(const FusedSvdArgs<double, double>&,
                                                      cudaStream_t);

}  // namespace trp::cuda
