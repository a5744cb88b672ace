// trp::truncated_svd on the CPU: U [..., m, k], S [..., k], V [..., n, k], rank [...].
#include <ATen/ATen.h>
#include <torch/library.h>

#include "svd_core.h"
#include "trp/checks.h"

namespace trp::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> truncated_svd_cpu(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  const at::Tensor input = W.contiguous();
  const int64_t m = W.size(-2), n = W.size(-1), k = std::min(m, n);
  std::vector<int64_t> batch(W.sizes().begin(), W.sizes().end() - 2);
  auto with = [&](std::initializer_list<int64_t> tail) {
    std::vector<int64_t> shape = batch;
    shape.insert(shape.end(), tail);
    return shape;
  };
  // Zero-filled: entries past each matrix's rank stay exactly zero.
  at::Tensor U = at::zeros(with({m, k}), W.options());
  at::Tensor S = at::zeros(with({k}), W.options());
  at::Tensor V = at::zeros(with({n, k}), W.options());
  at::Tensor rank = at::empty(batch, W.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "trp_truncated_svd_cpu", [&] {
    scalar_t* u = U.mutable_data_ptr<scalar_t>();
    scalar_t* s = S.mutable_data_ptr<scalar_t>();
    scalar_t* v = V.mutable_data_ptr<scalar_t>();
    int64_t* r_out = rank.mutable_data_ptr<int64_t>();
    batched_svd({input}, {}, rule, "W", [&](MatrixId id, const MatrixSVD& svd) {
      const int64_t b = id.index;
      const int64_t r = svd.rank;
      r_out[b] = r;
      for (int64_t j = 0; j < r; ++j) {
        s[b * k + j] = static_cast<scalar_t>(svd.sigma[j]);
        for (int64_t i = 0; i < m; ++i) {
          u[(b * m + i) * k + j] = static_cast<scalar_t>(svd.left[i + j * m]);
        }
        for (int64_t i = 0; i < n; ++i) {
          v[(b * n + i) * k + j] = static_cast<scalar_t>(svd.right[i + j * n]);
        }
      }
    });
  });
  return {U, S, V, rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CPU, m) { m.impl("truncated_svd", &truncated_svd_cpu); }

}  // namespace trp::cpu
