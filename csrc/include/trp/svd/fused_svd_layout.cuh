// The shared-memory layout of the fused SVD kernel (csrc/cuda/fused_svd.cu): its block shape,
// the byte offsets of its arrays (computed alike on the host, for the launch size, and on the
// device), and the view of the oriented input matrix.
#pragma once

#include <cstdint>

#include "trp/cuda_utils.cuh"
#include "trp/svd/jacobi_eigen.cuh"
#include "trp/svd/svd_cuda.h"

namespace trp::cuda::fused_svd {

constexpr int kThreads = 256;           // 16 x 16: one 4 x 4 tile of the 64 x 64 Gram each
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kChunk = 32;              // long-side columns staged in shared memory per pass
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
      reduce_i, qt, stage2;
  int64_t bytes;

  // warm: a start basis is given (its float64 copy and a second staging buffer).
  __host__ __device__ FusedLayout(int k, bool refine, int64_t v_size, bool warm) {
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
    qt = take(warm ? square : 0, 8);
    stage2 = take(warm ? static_cast<int64_t>(kChunk) * stage_ld : 0, 8);
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
  double* qt;       // warm start only: the start basis, vectors as rows (order_n x ld)
  double* stage2;   // warm start only: the staged columns rotated into that basis

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
        reduce_i(reinterpret_cast<int64_t*>(smem + at.reduce_i)),
        qt(reinterpret_cast<double*>(smem + at.qt)),
        stage2(reinterpret_cast<double*>(smem + at.stage2)) {}

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

}  // namespace trp::cuda::fused_svd
