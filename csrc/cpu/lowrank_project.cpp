// trp::lowrank_project on the CPU: W_low = U_r S_r V_r^T and subgrad = U_r V_r^T, shaped like W.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "svd_core.h"
#include "trp/checks.h"

namespace trp::cpu {
namespace {

// The float64 result is written in place for float64 outputs, through a scratch buffer else.
template <typename scalar_t>
void compose_into(const MatrixSVD& svd, bool with_sigma, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    compose_low_rank(svd, with_sigma, out);
  } else {
    thread_local std::vector<double> scratch;
    scratch.resize(svd.m * svd.n);
    compose_low_rank(svd, with_sigma, scratch.data());
    std::copy(scratch.begin(), scratch.end(), out);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lowrank_project_cpu(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  const at::Tensor input = W.contiguous();
  const int64_t mn = W.size(-2) * W.size(-1);
  at::Tensor low = at::empty_like(input);
  at::Tensor subgrad = at::empty_like(input);
  std::vector<int64_t> batch(W.sizes().begin(), W.sizes().end() - 2);
  at::Tensor rank = at::empty(batch, W.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "trp_lowrank_project_cpu", [&] {
    scalar_t* low_out = low.mutable_data_ptr<scalar_t>();
    scalar_t* sub_out = subgrad.mutable_data_ptr<scalar_t>();
    int64_t* r_out = rank.mutable_data_ptr<int64_t>();
    batched_svd(input, rule, [&](int64_t b, const MatrixSVD& svd) {
      r_out[b] = svd.rank;
      compose_into(svd, true, low_out + b * mn);
      compose_into(svd, false, sub_out + b * mn);
    });
  });
  return {low, subgrad, rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CPU, m) { m.impl("lowrank_project", &lowrank_project_cpu); }

}  // namespace trp::cpu
