// trp::lowrank_project and trp::lowrank_project_groups on the CPU: W_low = U_r S_r V_r^T and
// subgrad = U_r V_r^T, shaped like W, the ranks, and each matrix's basis for the next call (a
// warm start: svd_core.h). The list variant runs the matrices of every group in one pool of
// work, so small groups do not leave threads idle.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "svd_core.h"
#include "trp/checks.h"

namespace trp::cpu {
namespace {

struct Outputs {
  std::vector<at::Tensor> low, subgrad, rank, basis;
};

Outputs project(const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& starts,
                const RankRule& rule, const char* name) {
  Outputs out;
  for (const at::Tensor& W : inputs) {
    out.low.push_back(at::empty_like(W));
    out.subgrad.push_back(at::empty_like(W));
    std::vector<int64_t> batch(W.sizes().begin(), W.sizes().end() - 2);
    out.rank.push_back(at::empty(batch, W.options().dtype(at::kLong)));
    const int64_t k = std::min(W.size(-2), W.size(-1));
    batch.insert(batch.end(), {k, k});
    out.basis.push_back(at::empty(batch, W.options().dtype(at::kDouble)));
  }
  batched_svd(inputs, starts, rule, name, [&](MatrixId id, const MatrixSVD& svd) {
    const at::Tensor& W = inputs[id.tensor];
    const int64_t offset = id.index * W.size(-2) * W.size(-1);
    out.rank[id.tensor].mutable_data_ptr<int64_t>()[id.index] = svd.rank;
    AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "trp_lowrank_project_cpu", [&] {
      compose_low_rank(svd, true, out.low[id.tensor].mutable_data_ptr<scalar_t>() + offset);
      compose_low_rank(svd, false, out.subgrad[id.tensor].mutable_data_ptr<scalar_t>() + offset);
    });
    // Row-major [k, k] with the vectors as columns, from the column-major basis.
    const int64_t k = svd.k;
    double* basis = out.basis[id.tensor].mutable_data_ptr<double>() + id.index * k * k;
    transpose_square(svd.basis, k, basis);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_project_cpu(
    const at::Tensor& W, std::optional<double> energy, std::optional<double> threshold,
    std::optional<int64_t> max_rank, const std::optional<at::Tensor>& basis) {
  check_matrix_batch(W);
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  std::vector<at::Tensor> starts;
  if (basis.has_value()) starts.push_back(check_start_basis(W, *basis, "basis"));
  Outputs out = project({W.contiguous()}, starts, rule, "W");
  return {out.low[0], out.subgrad[0], out.rank[0], out.basis[0]};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lowrank_project_groups_cpu(at::TensorList W, std::optional<double> energy,
                           std::optional<double> threshold, std::optional<int64_t> max_rank,
                           const std::optional<c10::List<std::optional<at::Tensor>>>& basis) {
  const RankRule rule = make_rank_rule(energy, threshold, max_rank);
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& group : W) {
    check_matrix_batch(group);
    inputs.push_back(group.contiguous());
  }
  Outputs out = project(inputs, check_start_bases(W, basis), rule, "W");
  return {out.low, out.subgrad, out.rank, out.basis};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CPU, m) {
  m.impl("lowrank_project", &lowrank_project_cpu);
  m.impl("lowrank_project_groups", &lowrank_project_groups_cpu);
}

}  // namespace trp::cpu
