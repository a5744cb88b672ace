// Block-wide matrix products of the fused SVD kernel (csrc/cuda/fused_svd.cu), all streaming the
// long side through shared memory kChunk columns at a time: the Gram matrix of the short side,
// the long-side factor from the eigenvectors, and lowrank_project's two products.
#pragma once

#include <cmath>
#include <cstdint>

#include "trp/svd/fused_svd_layout.cuh"

namespace trp::cuda::fused_svd {

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

// stage2 = rotation (order_n x order_n, rows, stride ld) times the staged columns, in the
// staging layout; rows past order_n zero.
template <typename Shared>
__device__ void rotate_stage(const double* rotation, const Shared& sh) {
  const int items = kChunk * sh.stage_rows;
  for (int u = threadIdx.x; u < items; u += kThreads) {
    const int lc = u / sh.stage_rows, c = u - lc * sh.stage_rows;
    double acc = 0.0;
    if (c < sh.order_n) {
      const double* row = rotation + c * sh.ld;
      const double* col = sh.stage + lc * sh.stage_ld;
      for (int i = 0; i < sh.order_n; ++i) acc += row[i] * col[i];
    }
    sh.stage2[lc * sh.stage_ld + c] = acc;
  }
  __syncthreads();
}

// g (upper triangle, order_n x order_n, zero padding) = B B^T with B = src, or, given a
// `rotation` R (rows, order_n x order_n; a warm start), B = R src: the Gram matrix in the
// rotated basis, R G R^T, formed from the input itself.
template <typename Src, typename Shared>
__device__ void gram_upper(const Src& src, int k, int64_t L, double* g, const Shared& sh,
                           const double* rotation = nullptr) {
  const int tiles = sh.stage_rows / 4;
  const int ti = threadIdx.x / 16, tj = threadIdx.x % 16;
  const bool mine = ti < tiles && tj < tiles && ti <= tj;
  double acc[4][4] = {};
  for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
    stage_columns(src, k, L, l0, sh);
    if (rotation != nullptr) rotate_stage(rotation, sh);
    const double* staged = rotation != nullptr ? sh.stage2 : sh.stage;
    if (mine) {
      for (int lc = 0; lc < kChunk; ++lc) {
        const double* row = staged + lc * sh.stage_ld;
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

}  // namespace trp::cuda::fused_svd
