// The warm start of the fused SVD kernel (csrc/cuda/fused_svd.cu; docs/cuda_svd.md, "Warm
// start"): the previous projection's eigenvectors Q0, checked and made orthonormal in shared
// memory, so that the Jacobi eigensolver can run on Q0^T G Q0 -- nearly diagonal after a small
// change of the matrix -- and accumulate its rotations onto Q0.
#pragma once

#include <cmath>
#include <cstdint>

#include "trp/block_reduce.cuh"
#include "trp/svd/fused_svd_layout.cuh"

namespace trp::cuda::fused_svd {

// The largest |Q0^T Q0 - I| of a usable start. A basis this close to orthonormal is made
// orthonormal to rounding by one Newton-Schulz step (the error is squared); anything further
// off (another matrix's scaled vectors, garbage) is not a basis and the solve starts cold.
constexpr double kStartOrthogonality = 1e-6;

// Loads the k x k start basis `start` (row-major, vectors as columns, float64) into sh.qt as
// rows (qt[c][i] = start[i][c]; the pad of an odd k is the unit vector), and returns whether it
// is usable: finite and orthonormal to kStartOrthogonality. A usable start leaves sh.qt
// orthonormal to rounding (Q0 <- Q0 (3 I - Q0^T Q0) / 2). Uses sh.g and sh.stage2 as scratch.
// All threads of the block must call it.
template <typename Shared>
__device__ bool load_start_basis(const double* start, int k, const Shared& sh) {
  const int n = sh.order_n;
  int bad = 0;
  for (int u = threadIdx.x; u < n * n; u += kThreads) {
    const int c = u / n, i = u - c * n;
    double v = c == i ? 1.0 : 0.0;
    if (c < k && i < k) {
      v = start[static_cast<int64_t>(i) * k + c];
      bad |= !isfinite(v);
    }
    sh.qt[c * sh.ld + i] = v;
  }
  if (__syncthreads_or(bad)) return false;
  // C = qt qt^T (the Gram matrix of the vectors) into g, and its largest distance from I.
  double worst = 0.0;
  for (int u = threadIdx.x; u < n * n; u += kThreads) {
    const int c = u / n, d = u - c * n;
    double acc = 0.0;
    for (int i = 0; i < n; ++i) acc += sh.qt[c * sh.ld + i] * sh.qt[d * sh.ld + i];
    sh.g[c * sh.ld + d] = acc;
    const double off = fabs(acc - (c == d ? 1.0 : 0.0));
    worst = isnan(off) ? INFINITY : fmax(worst, off);  // inf: entries so large they overflow
  }
  worst = block_max(worst, sh.reduce_v);  // its barriers also publish g
  if (!(worst <= kStartOrthogonality)) return false;
  // qt <- (1.5 I - 0.5 C) qt. Column i of the result needs column i of qt alone, so the
  // columns go through stage2 (kChunk of them at a time) and back.
  for (int i0 = 0; i0 < n; i0 += kChunk) {
    const int width = n - i0 < kChunk ? n - i0 : kChunk;
    for (int u = threadIdx.x; u < width * n; u += kThreads) {
      const int ic = u / n, c = u - ic * n, i = i0 + ic;
      double acc = 1.5 * sh.qt[c * sh.ld + i];
      for (int d = 0; d < n; ++d) acc -= 0.5 * sh.g[c * sh.ld + d] * sh.qt[d * sh.ld + i];
      sh.stage2[ic * sh.stage_ld + c] = acc;
    }
    __syncthreads();
    for (int u = threadIdx.x; u < width * n; u += kThreads) {
      const int ic = u / n, c = u - ic * n;
      sh.qt[c * sh.ld + i0 + ic] = sh.stage2[ic * sh.stage_ld + c];
    }
    __syncthreads();
  }
  return true;
}

}  // namespace trp::cuda::fused_svd
