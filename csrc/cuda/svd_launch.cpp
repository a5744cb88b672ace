// The CUDA SVD pipeline (docs/cuda_svd.md), launcher side. By k = min(m, n):
//  * k <= kFusedSvdMaxK: one fused kernel launch does everything (csrc/cuda/fused_svd.cu);
//  * larger k: power-of-two scaling to float64, the Gram matrix of the short side by cuBLAS,
//    the blocked Jacobi eigensolver, for float64 inputs a second (refinement) pass on
//    Y = A^T Q1, then the spectrum, the factors, and for the projection two cuBLAS GEMMs.
// Everything runs on the current stream with no host synchronisation and allocates only
// through the caching allocator, so a call can be captured in a CUDA graph. With a start basis
// Q0 (the projection's warm start) both eigensolvers begin from Q0 instead of the identity.

#include "svd_launch.h"

#include <c10/util/accumulate.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "trp/cuda_launch.h"
#include "trp/svd/svd_cuda.h"

namespace trp::cuda {
namespace {

struct Shape {
  std::vector<int64_t> batch_dims;
  int64_t batch, m, n, k, L;
  bool wide;

  explicit Shape(const at::Tensor& W)
      : batch_dims(W.sizes().begin(), W.sizes().end() - 2),
        batch(c10::multiply_integers(batch_dims)),
        m(W.size(-2)),
        n(W.size(-1)),
        k(std::min(m, n)),
        L(std::max(m, n)),
        wide(m <= n) {}

  std::vector<int64_t> with(std::initializer_list<int64_t> tail) const {
    std::vector<int64_t> shape = batch_dims;
    shape.insert(shape.end(), tail);
    return shape;
  }
};

unsigned long long* bits_ptr(const at::Tensor& t) {
  return reinterpret_cast<unsigned long long*>(t.mutable_data_ptr<int64_t>());
}

// The top-left k x k block of a batch of square matrices (a strided view).
at::Tensor top_left(const at::Tensor& t, int64_t k) { return t.narrow(1, 0, k).narrow(2, 0, k); }

template <typename T, typename F>
void run_fused(const at::Tensor& input, const Shape& s, const RankRule& rule, const at::Tensor& u,
               const at::Tensor& v, const at::Tensor& sv, const at::Tensor& start,
               DeviceSvd& out) {
  const at::Tensor scratch = at::empty({s.batch, fused_svd_scratch_elems<T>(s.m, s.n)},
                                       input.options().dtype(at::kDouble));
  FusedSvdArgs<T, F> args{};
  args.w = input.const_data_ptr<T>();
  args.batch = s.batch;
  args.m = s.m;
  args.n = s.n;
  args.rule = rule;
  args.rank = out.rank.mutable_data_ptr<int64_t>();
  args.u = u.mutable_data_ptr<F>();
  args.v = v.mutable_data_ptr<F>();
  args.s = sv.defined() ? sv.mutable_data_ptr<F>() : nullptr;
  args.low = out.low.defined() ? out.low.mutable_data_ptr<T>() : nullptr;
  args.subgrad = out.subgrad.defined() ? out.subgrad.mutable_data_ptr<T>() : nullptr;
  args.scratch = scratch.mutable_data_ptr<double>();
  args.start = start.defined() ? start.const_data_ptr<double>() : nullptr;
  args.basis = out.basis.defined() ? out.basis.mutable_data_ptr<double>() : nullptr;
  TRP_CUDA_CHECK((launch_fused_svd<T, F>(args, current_stream())));
}

// The largest |Q0^T Q0 - I| of a usable start basis: the fused kernel's rule
// (trp/svd/warm_start.cuh), one Newton-Schulz step from orthonormal to rounding.
constexpr double kStartOrthogonality = 1e-6;

// The rotation to start the blocked Jacobi of the k x k Gram matrices `gram` [batch, k, k]
// from: each matrix's start basis made orthonormal (Q0 (3 I - Q0^T Q0) / 2) where it is finite
// and orthonormal to kStartOrthogonality, the identity elsewhere. All on the device.
at::Tensor start_rotation(const at::Tensor& start, int64_t k) {
  const at::Tensor q0 = start.reshape({-1, k, k});
  const at::Tensor eye = at::eye(k, q0.options());
  const at::Tensor c = at::bmm(q0.mT(), q0);
  // NaN compares false: a non-finite start is never usable.
  const at::Tensor usable = (c - eye).abs().amax({1, 2}).le(kStartOrthogonality);
  const at::Tensor orthonormal = at::bmm(q0, eye * 1.5 - c * 0.5);
  return at::where(usable.view({-1, 1, 1}), orthonormal, eye);
}

// Eigen-decomposition of the k x k top-left blocks of g (zero elsewhere) by the blocked Jacobi,
// its rotations accumulated onto `rotation` ([batch, k, k]; undefined: the identity); returns
// the eigenvectors (columns, dim x dim); the eigenvalues are left on g's diagonal.
at::Tensor block_eigenvectors(const at::Tensor& g, int64_t k,
                              const at::Tensor& rotation = at::Tensor()) {
  const int64_t batch = g.size(0), dim = g.size(1);
  const int tile = block_jacobi_tile(k);
  const auto f64 = g.options();
  at::Tensor q = at::eye(dim, f64).expand({batch, dim, dim}).contiguous();
  if (rotation.defined()) top_left(q, k).copy_(rotation);
  const at::Tensor rotations = at::empty({batch, dim / tile, tile, tile}, f64);
  const at::Tensor rotating = at::empty({batch, dim / tile}, f64.dtype(at::kInt));
  // Rows 0 .. batch-1: each matrix's rotations per sweep; row `batch`: the whole batch's.
  const at::Tensor sweeps = at::zeros({batch + 1, kBlockJacobiMaxSweeps}, f64.dtype(at::kInt));
  BlockJacobiArgs args{};
  args.g = g.mutable_data_ptr<double>();
  args.q = q.mutable_data_ptr<double>();
  args.rotations = rotations.mutable_data_ptr<double>();
  args.rotating = rotating.mutable_data_ptr<int32_t>();
  args.sweep_rotations = sweeps.mutable_data_ptr<int32_t>();
  args.any_rotations = args.sweep_rotations + batch * kBlockJacobiMaxSweeps;
  args.batch = batch;
  args.dim = dim;
  args.tile = tile;
  TRP_CUDA_CHECK(launch_block_jacobi(args, current_stream()));
  return q;
}

template <typename F>
void write_factors(const at::Tensor& short_vecs, const at::Tensor& long_vecs,
                   const at::Tensor& order, const at::Tensor& sigma, const at::Tensor& max_bits,
                   const Shape& s, const at::Tensor& rank, const at::Tensor& u,
                   const at::Tensor& v, const at::Tensor& sv, const at::Tensor& us) {
  TORCH_INTERNAL_ASSERT(short_vecs.stride(2) == 1 && long_vecs.stride(2) == 1);
  const at::Tensor scratch = at::empty({s.batch, 2 * s.L + s.k}, sigma.options());
  FactorArgs<F> args{};
  args.short_vecs = short_vecs.const_data_ptr<double>();
  args.short_ld = short_vecs.stride(1);
  args.short_batch_stride = short_vecs.stride(0);
  args.long_vecs = long_vecs.const_data_ptr<double>();
  args.long_ld = long_vecs.stride(1);
  args.long_batch_stride = long_vecs.stride(0);
  args.order = order.const_data_ptr<int32_t>();
  args.sigma = sigma.const_data_ptr<double>();
  args.rank = rank.const_data_ptr<int64_t>();
  args.max_bits = bits_ptr(max_bits);
  args.batch = s.batch;
  args.m = s.m;
  args.n = s.n;
  args.u = u.mutable_data_ptr<F>();
  args.v = v.mutable_data_ptr<F>();
  args.s = sv.defined() ? sv.mutable_data_ptr<F>() : nullptr;
  args.us = us.defined() ? us.mutable_data_ptr<F>() : nullptr;
  args.scratch = scratch.mutable_data_ptr<double>();
  TRP_CUDA_CHECK(launch_svd_factors<F>(args, current_stream()));
}

template <typename T>
void run_blocked(const at::Tensor& input, const Shape& s, const RankRule& rule,
                 const at::Tensor& start, DeviceSvd& out) {
  const cudaStream_t stream = current_stream();
  const auto f64 = input.options().dtype(at::kDouble);
  const at::Tensor max_bits = at::zeros({s.batch}, input.options().dtype(at::kLong));
  const at::Tensor nonfinite = at::zeros({s.batch}, input.options().dtype(at::kInt));
  TRP_CUDA_CHECK(launch_scale_scan<T>(input.const_data_ptr<T>(), s.batch, s.m * s.n,
                                      bits_ptr(max_bits), nonfinite.mutable_data_ptr<int32_t>(),
                                      stream));
  const at::Tensor scaled = at::empty({s.batch, s.m, s.n}, f64);
  TRP_CUDA_CHECK(launch_scale_to_double<T>(input.const_data_ptr<T>(), s.batch, s.m * s.n,
                                           bits_ptr(max_bits),
                                           scaled.mutable_data_ptr<double>(), stream));
  const at::Tensor A = s.wide ? scaled : scaled.mT();  // [batch, k, L]
  const int64_t dim = block_jacobi_dim(s.k);

  // Pass 1: eigenvectors Q1 of G = A A^T (of Q0^T G Q0, rotated back, from a start Q0);
  // Y = A^T Q1.
  at::Tensor g = at::zeros({s.batch, dim, dim}, f64);
  at::Tensor gk = top_left(g, s.k);
  at::bmm_out(gk, A, A.mT());
  at::Tensor rotation;
  if (start.defined()) {
    rotation = start_rotation(start, s.k);
    gk.copy_(at::bmm(rotation.mT(), at::bmm(gk, rotation)));
  }
  at::Tensor short_vecs = top_left(block_eigenvectors(g, s.k, rotation), s.k);
  at::Tensor long_vecs = at::bmm(A.mT(), short_vecs);
  if constexpr (std::is_same_v<T, double>) {
    // Pass 2 (float64): eigenvectors Q2 of Y^T Y computed from Y; U = Q1 Q2, V = Y Q2 / s.
    g.zero_();
    at::bmm_out(gk, long_vecs.mT(), long_vecs);
    const at::Tensor q2 = top_left(block_eigenvectors(g, s.k), s.k);
    short_vecs = at::bmm(short_vecs, q2);
    long_vecs = at::bmm(long_vecs, q2);
  }

  const at::Tensor order = at::empty({s.batch, s.k}, input.options().dtype(at::kInt));
  const at::Tensor sigma = at::empty({s.batch, s.k}, f64);
  SpectrumArgs spectrum{};
  spectrum.g = g.const_data_ptr<double>();
  spectrum.g_ld = dim;
  spectrum.g_batch_stride = dim * dim;
  spectrum.batch = s.batch;
  spectrum.k = s.k;
  spectrum.long_dim = s.L;
  spectrum.flush_noise = std::is_same_v<T, float>;
  spectrum.rule = rule;
  spectrum.max_bits = bits_ptr(max_bits);
  spectrum.nonfinite = nonfinite.const_data_ptr<int32_t>();
  spectrum.order = order.mutable_data_ptr<int32_t>();
  spectrum.sigma = sigma.mutable_data_ptr<double>();
  spectrum.rank = out.rank.mutable_data_ptr<int64_t>();
  TRP_CUDA_CHECK(launch_spectrum(spectrum, stream));
  if (out.basis.defined()) {
    // Every eigenvector, largest first (columns in the order of the spectrum); NaN for a
    // non-finite matrix, as its other outputs.
    const at::Tensor by_size = order.to(at::kLong).unsqueeze(1).expand({s.batch, s.k, s.k});
    const at::Tensor ordered = short_vecs.gather(2, by_size);
    out.basis.view({s.batch, s.k, s.k})
        .copy_(at::where(nonfinite.view({-1, 1, 1}).ne(0),
                         at::full({}, std::numeric_limits<double>::quiet_NaN(), f64), ordered));
  }

  if (out.U.defined()) {
    write_factors<T>(short_vecs, long_vecs, order, sigma, max_bits, s, out.rank, out.U, out.V,
                     out.S, at::Tensor());
    return;
  }
  // The projection from float64 factors, so that its accuracy does not depend on whether the
  // caller allows TF32 for float32 matmuls.
  const at::Tensor u = at::empty({s.batch, s.m, s.k}, f64);
  const at::Tensor us = at::empty({s.batch, s.m, s.k}, f64);
  const at::Tensor v = at::empty({s.batch, s.n, s.k}, f64);
  write_factors<double>(short_vecs, long_vecs, order, sigma, max_bits, s, out.rank, u, v,
                        at::Tensor(), us);
  at::Tensor low = out.low.view({s.batch, s.m, s.n});
  at::Tensor subgrad = out.subgrad.view({s.batch, s.m, s.n});
  if constexpr (std::is_same_v<T, double>) {
    at::bmm_out(low, us, v.mT());
    at::bmm_out(subgrad, u, v.mT());
  } else {
    low.copy_(at::bmm(us, v.mT()));
    subgrad.copy_(at::bmm(u, v.mT()));
  }
}

}  // namespace

DeviceSvd device_svd(const at::Tensor& W, const RankRule& rule, SvdProducts products,
                     const at::Tensor& start) {
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor input = W.contiguous();
  const Shape s(input);
  DeviceSvd out;
  out.rank = at::empty(s.batch_dims, input.options().dtype(at::kLong));
  if (products == SvdProducts::kFactors) {
    out.U = at::empty(s.with({s.m, s.k}), input.options());
    out.S = at::empty(s.with({s.k}), input.options());
    out.V = at::empty(s.with({s.n, s.k}), input.options());
  } else {
    out.low = at::empty_like(input);
    out.subgrad = at::empty_like(input);
    out.basis = at::empty(s.with({s.k, s.k}), input.options().dtype(at::kDouble));
  }
  if (s.batch == 0) return out;
  if (s.k == 0) {  // empty matrices: rank 0; the factors and products have no entries
    out.rank.zero_();
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "trp_device_svd", [&] {
    if (s.k > kFusedSvdMaxK) {
      run_blocked<scalar_t>(input, s, rule, start, out);
    } else if (products == SvdProducts::kFactors) {
      run_fused<scalar_t, scalar_t>(input, s, rule, out.U, out.V, out.S, at::Tensor(), out);
    } else {
      const auto f64 = input.options().dtype(at::kDouble);
      run_fused<scalar_t, double>(input, s, rule, at::empty({s.batch, s.m, s.k}, f64),
                                  at::empty({s.batch, s.n, s.k}, f64), at::Tensor(), start, out);
    }
  });
  return out;
}

}  // namespace trp::cuda
