// trp::lowrank_project and trp::lowrank_project_groups on CUDA: W_low = U_r S_r V_r^T and
// subgrad = U_r V_r^T shaped like W, the ranks, and the basis to start the next call from (the
// pipeline, warm start included: csrc/cuda/svd_launch.cpp).
//
// The list variant runs every group on its own stream forked from the current one and joins
// them before returning: a network's projection is a handful of groups of a few matrices, each
// latency-bound and far from filling the GPU, so their times overlap instead of adding up.
// Fork and join are stream events, which CUDA-graph capture records as graph edges.
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "svd_launch.h"
#include "trp/checks.h"
#include "trp/cuda_launch.h"

namespace trp::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_project_cuda(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank, const std::optional<at::Tensor>& basis) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  const at::Tensor start = basis.has_value() ? check_start_basis(W, *basis, "basis") : at::Tensor();
  DeviceSvd out = device_svd(W, rule, SvdProducts::kProjection, start);
  return {out.low, out.subgrad, out.rank, out.basis};
}

// An event marking the work enqueued on `stream` so far; destroy it once waited for (CUDA
// releases it when the wait is satisfied).
cudaEvent_t mark(const c10::cuda::CUDAStream& stream) {
  cudaEvent_t event;
  TRP_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  TRP_CUDA_CHECK(cudaEventRecord(event, stream.stream()));
  return event;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lowrank_project_groups_cuda(at::TensorList W, std::optional<double> energy,
                            std::optional<double> threshold, std::optional<int64_t> max_rank,
                            const std::optional<c10::List<std::optional<at::Tensor>>>& basis) {
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  for (const at::Tensor& group : W) {
    check_matrix_batch(group);
    TORCH_CHECK_VALUE(group.device() == W[0].device(), "every group must be on one device; W[0] "
                      "is on ", W[0].device(), ", another on ", group.device());
  }
  std::vector<at::Tensor> starts = check_start_bases(W, basis);
  std::vector<at::Tensor> low(W.size()), subgrad(W.size()), rank(W.size()), bases(W.size());
  if (W.empty()) return {low, subgrad, rank, bases};
  const c10::cuda::CUDAGuard guard(W[0].device());
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  // The longest groups (k^2 L grows with their latency) are enqueued first.
  std::vector<size_t> order(W.size());
  std::iota(order.begin(), order.end(), 0);
  auto cost = [&](size_t i) {
    const int64_t m = W[i].size(-2), n = W[i].size(-1);
    return std::min(m, n) * std::min(m, n) * std::max(m, n);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return cost(a) > cost(b); });
  const cudaEvent_t forked = mark(main);
  std::vector<c10::cuda::CUDAStream> sides;
  for (const size_t i : order) {
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, main.device_index());
    TRP_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), forked, 0));
    sides.push_back(side);
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      // The start is read on the side stream: its block must outlive that use.
      if (starts[i].defined()) starts[i].record_stream(side);
      DeviceSvd out = device_svd(W[i], rule, SvdProducts::kProjection, starts[i]);
      low[i] = out.low;
      subgrad[i] = out.subgrad;
      rank[i] = out.rank;
      bases[i] = out.basis;
    }
    // Allocated on the side stream, used on the main one: their blocks must not be reused by
    // the side stream before the main stream is done with them.
    for (at::Tensor* t : {&low[i], &subgrad[i], &rank[i], &bases[i]}) t->record_stream(main);
  }
  TRP_CUDA_CHECK(cudaEventDestroy(forked));
  for (const c10::cuda::CUDAStream& side : sides) {
    const cudaEvent_t done = mark(side);
    TRP_CUDA_CHECK(cudaStreamWaitEvent(main.stream(), done, 0));
    TRP_CUDA_CHECK(cudaEventDestroy(done));
  }
  return {low, subgrad, rank, bases};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CUDA, m) {
  m.impl("lowrank_project", &lowrank_project_cuda);
  m.impl("lowrank_project_groups", &lowrank_project_groups_cuda);
}

}  // namespace trp::cuda
