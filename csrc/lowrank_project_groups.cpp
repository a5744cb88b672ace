// trp::lowrank_project_groups for every backend without a kernel of its own: one
// trp::lowrank_project call per group. (The CPU registers a kernel that pools the matrices of
// all groups; a device backend may register one that launches all groups together.)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

namespace trp {
namespace {

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
lowrank_project_groups_by_group(at::TensorList W, std::optional<double> energy,
                                std::optional<double> threshold, std::optional<int64_t> max_rank) {
  static const auto project =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("trp::lowrank_project", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, std::optional<double>, std::optional<double>,
              std::optional<int64_t>)>();
  std::vector<at::Tensor> low, subgrad, rank;
  for (const at::Tensor& group : W) {
    auto [l, s, r] = project.call(group, energy, threshold, max_rank);
    low.push_back(l);
    subgrad.push_back(s);
    rank.push_back(r);
  }
  return {low, subgrad, rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CompositeExplicitAutograd, m) {
  m.impl("lowrank_project_groups", &lowrank_project_groups_by_group);
}

}  // namespace trp
