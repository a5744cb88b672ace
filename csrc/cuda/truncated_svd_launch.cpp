// trp::truncated_svd on CUDA: U [..., m, k], S [..., k], V [..., n, k], rank [...] (the
// pipeline: csrc/cuda/svd_launch.cpp).
#include <torch/library.h>

#include "svd_launch.h"
#include "trp/checks.h"

namespace trp::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> truncated_svd_cuda(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  DeviceSvd out = device_svd(W, rule, SvdProducts::kFactors);
  return {out.U, out.S, out.V, out.rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CUDA, m) { m.impl("truncated_svd", &truncated_svd_cuda); }

}  // namespace trp::cuda
