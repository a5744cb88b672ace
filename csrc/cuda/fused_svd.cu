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
#include <cmath>
#include <type_traits>

#include "trp/block_reduce.cuh"
#include "trp/cuda_utils.cuh"
#include "trp/dynamic_smem.h"
#include "trp/jacobi_eigen.cuh"
#include "trp/orthonormal_completion.cuh"
#include "trp/svd_cuda.h"
#include "trp/svd_scaling.cuh"
#include "trp/svd_spectrum.cuh"

namespace trp::cuda {
namespace {

constexpr int kThreads = 256;           // 16 x 16: one 4 x 4 tile of the 64 x 64 Gram each
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kChunk = 32;              // long-side columns staged in shared memory per pass
constexpr int kMaxSweeps = 32;          // adversarial spectra converge in <= 20 (docs)
static_assert(kThreads == 256 && kFusedSvdMaxK == 64, "the Gram tiling assumes 16 x 16 tiles");

// Entry (i, l) of the k x L orientation of a stored matrix, times `scale`.
template <typename E>
struct Oriented {
  const E* data;
  int64_t row_stride, col_stride;
  double scale;
  __device__ double operator()(int64_t i, int64_t l) const {
    return static_cast<double>(data[i * row_stride + l * col_stride]) * scale;
  }
};

// Shared-memory layout of one block: byte offsets, computed the same way on the host (for the
// launch size) and on the device (to place the arrays). V: the eigenvector element type.
struct FusedLayout {
  int order_n;      // k rounded up to even (a zero row and column pad odd k)
  int ld;           // row stride of g / vt / vt2
  int stage_rows;   // order_n rounded up to the Gram tile (4)
  int stage_ld;     // odd, so that strided stores spread over the banks
  int64_t g, vt, vt2, stage, lambda, sigma, column_scale, reduce_v, jacobi_scratch, order, rank,
      reduce_i;
  int64_t bytes;

  __host__ __device__ FusedLayout(int k, bool refine, int64_t v_size) {
    order_n = k + (k & 1);
    ld = order_n + 1;
    stage_rows = (order_n + 3) / 4 * 4;
    stage_ld = stage_rows + 1;
    int64_t at = 0;
    auto take = [&](int64_t count, int64_t size) {
      at = (at + 7) / 8 * 8;
      const int64_t offset = at;
      at += count * size;
      return offset;
    };
    const int64_t square = static_cast<int64_t>(order_n) * ld;
    g = take(square, 8);
    vt = take(square, v_size);
    vt2 = take(refine ? square : 0, v_size);
    stage = take(static_cast<int64_t>(kChunk) * stage_ld, 8);
    lambda = take(order_n, 8);
    sigma = take(order_n, 8);
    column_scale = take(order_n, 8);
    reduce_v = take(kWarps, 8);
    jacobi_scratch = take(JacobiShared<double>::scratch_bytes(order_n), 1);
    order = take(order_n, 4);
    rank = take(1, 8);
    reduce_i = take(kWarps, 8);
    bytes = at;
  }
};

// The arrays of FusedLayout, placed in the block's shared memory. The pointers are offsets from
// the kernel's `extern __shared__` array itself (never through an integer), so that the
// compiler can tell they point to shared memory and emits ld.shared / st.shared for them.
template <typename V>
struct FusedShared {
  int order_n, ld, stage_rows, stage_ld;
  double* g;
  V* vt;
  V* vt2;           // float64 only: the refinement pass's eigenvectors
  double* stage;    // kChunk x stage_ld staged long-side columns; also scratch of k doubles
  double* lambda;   // eigenvalues in eigenvector order
  double* sigma;    // singular values, descending (scaled domain)
  double* column_scale;  // 1 / sigma[j] for the kept nonzero columns, else 0
  double* reduce_v;
  unsigned char* jacobi_scratch;
  int32_t* order;
  int64_t* rank;
  int64_t* reduce_i;

  __device__ FusedShared(unsigned char* smem, const FusedLayout& at)
      : order_n(at.order_n),
        ld(at.ld),
        stage_rows(at.stage_rows),
        stage_ld(at.stage_ld),
        g(reinterpret_cast<double*>(smem + at.g)),
        vt(reinterpret_cast<V*>(smem + at.vt)),
        vt2(reinterpret_cast<V*>(smem + at.vt2)),
        stage(reinterpret_cast<double*>(smem + at.stage)),
        lambda(reinterpret_cast<double*>(smem + at.lambda)),
        sigma(reinterpret_cast<double*>(smem + at.sigma)),
        column_scale(reinterpret_cast<double*>(smem + at.column_scale)),
        reduce_v(reinterpret_cast<double*>(smem + at.reduce_v)),
        jacobi_scratch(smem + at.jacobi_scratch),
        order(reinterpret_cast<int32_t*>(smem + at.order)),
        rank(reinterpret_cast<int64_t*>(smem + at.rank)),
        reduce_i(reinterpret_cast<int64_t*>(smem + at.reduce_i)) {}

  __device__ JacobiShared<V> jacobi(double* matrix, V* vectors) const {
    JacobiShared<V> s;
    s.g = matrix;
    s.vt = vectors;
    s.ld = ld;
    s.n = order_n;
    s.place_scratch(jacobi_scratch);
    return s;
  }
};

// Stages columns l0 .. l0+kChunk-1 of the orientation: stage[lc * stage_ld + i], zero past k
// and L. Threads run along whichever index is contiguous in memory.
template <typename Src, typename Shared>
__device__ void stage_columns(const Src& src, int k, int64_t L, int64_t l0,
                              const Shared& sh) {
  __syncthreads();  // the previous chunk has been used
  const int items = kChunk * sh.stage_rows;
  for (int u = threadIdx.x; u < items; u += kThreads) {
    int lc, i;
    if (src.col_stride == 1) {
      i = u / kChunk;
      lc = u - i * kChunk;
    } else {
      lc = u / sh.stage_rows;
      i = u - lc * sh.stage_rows;
    }
    const int64_t l = l0 + lc;
    sh.stage[lc * sh.stage_ld + i] = (i < k && l < L) ? src(i, l) : 0.0;
  }
  __syncthreads();
}

// g (upper triangle, order_n x order_n, zero padding) = src src^T.
template <typename Src, typename Shared>
__device__ void gram_upper(const Src& src, int k, int64_t L, double* g, const Shared& sh) {
  const int tiles = sh.stage_rows / 4;
  const int ti = threadIdx.x / 16, tj = threadIdx.x % 16;
  const bool mine = ti < tiles && tj < tiles && ti <= tj;
  double acc[4][4] = {};
  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    stage_columns(src, k, L, l0, sh);
    if (mine) {
      for (int lc = 0; lc < kChunk; ++lc) {
        const double* row = sh.stage + lc * sh.stage_ld;
        double a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          a[r] = row[4 * ti + r];
          b[r] = row[4 * tj + r];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
        }
      }
    }
  }
  if (mine) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int i = 4 * ti + r, j = 4 * tj + c;
        if (i <= j && j < sh.order_n) g[i * sh.ld + j] = acc[r][c];
      }
    }
  }
  __syncthreads();
}

template <typename V, typename Shared>
__device__ void set_identity(V* vt, const Shared& sh) {
  for (int u = threadIdx.x; u < sh.order_n * sh.order_n; u += kThreads) {
    const int c = u / sh.order_n, i = u - c * sh.order_n;
    vt[c * sh.ld + i] = static_cast<V>(c == i ? 1 : 0);
  }
}

// out[l * out_ld + j] = column_scale[j] * sum_i src(i, l) vecs[order[j]][i] for l < L, j < k
// (order null: the identity; column_scale null: 1). vecs holds vectors as rows (stride ld).
template <typename Src, typename V, typename Out, typename Shared>
__device__ void multiply_long_side(const Src& src, int k, int64_t L, const V* vecs,
                                   const int32_t* order, const double* column_scale, Out* out,
                                   int64_t out_ld, const Shared& sh) {
  const int col_groups = (k + 3) / 4;
  const int groups = col_groups * (kChunk / 2);  // 4 columns x 2 rows per thread
  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    stage_columns(src, k, L, l0, sh);
    for (int t = threadIdx.x; t < groups; t += kThreads) {
      const int jg = t % col_groups, lg = t / col_groups;
      const V* vec[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int j = 4 * jg + q < k ? 4 * jg + q : k - 1;
        vec[q] = vecs + (order ? order[j] : j) * sh.ld;
      }
      const double* s0 = sh.stage + (2 * lg) * sh.stage_ld;
      const double* s1 = s0 + sh.stage_ld;
      double acc[2][4] = {};
      for (int i = 0; i < k; ++i) {
        const double a0 = s0[i], a1 = s1[i];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const double v = static_cast<double>(vec[q][i]);
          acc[0][q] += a0 * v;
          acc[1][q] += a1 * v;
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t l = l0 + 2 * lg + r;
        if (l >= L) continue;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int j = 4 * jg + q;
          if (j < k) {
            const double scale = column_scale ? column_scale[j] : 1.0;
            out[l * out_ld + j] = static_cast<Out>(acc[r][q] * scale);
          }
        }
      }
    }
  }
  __syncthreads();
}

// low(i, l) = sum_{j<r} short[i][j] s_j long[l][j] and subgrad(i, l) = sum_{j<r} short[i][j]
// long[l][j] at the position of A(i, l) in W, with short[i][j] = vecs[order[j]][i].
template <typename T, typename V, typename F, typename Shared>
__device__ void compose_products(const Oriented<T>& a, int k, int64_t L, const V* vecs,
                                 const int32_t* order, const double* sigma, int exponent, int r,
                                 const F* long_factor, T* low, T* subgrad,
                                 const Shared& sh) {
  const Oriented<F> factor{long_factor, 1, k, 1.0};  // entry (j, l) = long[l][j]
  const int row_groups = (k + 3) / 4;
  const int groups = row_groups * (kChunk / 2);  // 4 rows i x 2 columns l per thread
  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    stage_columns(factor, r, L, l0, sh);
    for (int t = threadIdx.x; t < groups; t += kThreads) {
      const int ig = t % row_groups, lg = t / row_groups;
      const double* s0 = sh.stage + (2 * lg) * sh.stage_ld;
      const double* s1 = s0 + sh.stage_ld;
      double acc_low[2][4] = {}, acc_sub[2][4] = {};
      for (int j = 0; j < r; ++j) {
        const V* vec = vecs + order[j] * sh.ld + 4 * ig;
        const double sj = ldexp(sigma[j], exponent);
        const double b0 = s0[j], b1 = s1[j];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const double u = 4 * ig + q < k ? static_cast<double>(vec[q]) : 0.0;
          acc_sub[0][q] += u * b0;
          acc_sub[1][q] += u * b1;
          acc_low[0][q] += u * sj * b0;
          acc_low[1][q] += u * sj * b1;
        }
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t l = l0 + 2 * lg + c;
        if (l >= L) continue;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int i = 4 * ig + q;
          if (i >= k) continue;
          const int64_t at = i * a.row_stride + l * a.col_stride;
          low[at] = static_cast<T>(acc_low[c][q]);
          subgrad[at] = static_cast<T>(acc_sub[c][q]);
        }
      }
    }
  }
  __syncthreads();
}

template <typename T, typename F>
__device__ void write_nonfinite(const FusedSvdArgs<T, F>& args, int64_t b, int k) {
  const int64_t m = args.m, n = args.n;
  const F nan_f = static_cast<F>(NAN);
  for (int64_t e = threadIdx.x; e < m * k; e += kThreads) args.u[b * m * k + e] = nan_f;
  for (int64_t e = threadIdx.x; e < n * k; e += kThreads) args.v[b * n * k + e] = nan_f;
  if (args.s) {
    for (int64_t e = threadIdx.x; e < k; e += kThreads) args.s[b * k + e] = nan_f;
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
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t b = blockIdx.x;
  const int64_t m = args.m, n = args.n;
  const bool wide = m <= n;
  const int k = static_cast<int>(wide ? m : n);
  const int64_t L = wide ? n : m;
  const FusedShared<V> sh(smem, FusedLayout(k, kRefine, sizeof(V)));
  const T* w = args.w + b * m * n;

  // 1. Power-of-two scale and finiteness (trp/svd_scaling.cuh).
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

  // 2. Eigen-decomposition of the Gram matrix of the short side.
  gram_upper(a, k, L, sh.g, sh);
  set_identity(sh.vt, sh);
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
      const double value = j < r ? static_cast<double>(short_vecs[sh.order[j] * sh.ld + i]) : 0.0;
      short_out[e] = static_cast<F>(value);
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

template <typename T, typename F>
cudaError_t launch_fused_svd(const FusedSvdArgs<T, F>& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  const int k = static_cast<int>(args.m < args.n ? args.m : args.n);
  constexpr bool kRefine = std::is_same_v<T, double>;
  using V = std::conditional_t<kRefine, double, float>;
  const int64_t bytes = FusedLayout(k, kRefine, sizeof(V)).bytes;
  auto kernel = fused_svd_kernel<T, F>;
  TRP_CUDA_TRY(allow_dynamic_smem(kernel, bytes));
  kernel<<<static_cast<unsigned int>(args.batch), kThreads, bytes, stream>>>(args);
  return TRP_LAUNCH_STATUS();
}

template cudaError_t launch_fused_svd<float, float>(const FusedSvdArgs<float, float>&,
                                                    cudaStream_t);
template cudaError_t launch_fused_svd<float, double>(const FusedSvdArgs<float, double>&,
                                                     cudaStream_t);
template cudaError_t launch_fused_svd<double, double>(const FusedSvdArgs<double, double>&,
                                                      cudaStream_t);

}  // namespace trp::cuda
