// trp::lowrank_project on CUDA: W_low = U_r S_r V_r^T and subgrad = U_r V_r^T shaped like W, and
// the ranks (the pipeline: csrc/cuda/svd_launch.cpp).
#include <torch/library.h>

#include "svd_launch.h"
#include "trp/checks.h"

namespace trp::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lowrank_project_cuda(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  DeviceSvd out = device_svd(W, rule, SvdProducts::kProjection);
  return {out.low, out.subgrad, out.rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CUDA, m) { m.impl("lowrank_project", &lowrank_project_cuda); }

}  // namespace trp::cuda
