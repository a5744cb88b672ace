// Argument checks shared by every backend of the trp ops (CPU kernels and CUDA launchers), so
// a bad call fails the same way on every device. TORCH_CHECK_VALUE raises ValueError in Python
// and TORCH_CHECK_TYPE raises TypeError; every message names the offending argument.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trp/conv/conv_geometry.h"
#include "trp/rank_rule.h"

namespace trp {

inline RankRule make_rank_rule(std::optional<double> energy, std::optional<double> threshold,
                               std::optional<int64_t> max_rank) {
  RankRule rule;
  if (energy.has_value()) {
    const double e = *energy;
    TORCH_CHECK_VALUE(e > 0.0 && e <= 1.0, "energy must be in (0, 1], got ", e);
    rule.has_energy = true;
    rule.energy = e;
  }
  if (threshold.has_value()) {
    const double t = *threshold;
    TORCH_CHECK_VALUE(t >= 0.0 && std::isfinite(t),
                      "threshold must be a finite number >= 0, got ", t);
    rule.has_threshold = true;
    rule.threshold = t;
  }
  if (max_rank.has_value()) {
    TORCH_CHECK_VALUE(*max_rank >= 0, "max_rank must be >= 0, got ", *max_rank);
    rule.has_max_rank = true;
    rule.max_rank = *max_rank;
  }
  return rule;
}

inline void check_matrix_batch(const at::Tensor& W) {
  TORCH_CHECK_VALUE(W.dim() >= 2, "W must have at least 2 dimensions [..., m, n], got shape ",
                    W.sizes());
  TORCH_CHECK_TYPE(W.scalar_type() == at::kFloat || W.scalar_type() == at::kDouble,
                   "W must be float32 or float64, got ", W.scalar_type());
}

// A start basis of the projection ops (the `basis` they returned for W's previous value): float64
// [..., k, k] with W's batch shape, k = min(m, n), on W's device. Returns it contiguous.
inline at::Tensor check_start_basis(const at::Tensor& W, const at::Tensor& basis,
                                    const char* name) {
  TORCH_CHECK_TYPE(basis.scalar_type() == at::kDouble, name, " must be float64, got ",
                   basis.scalar_type());
  TORCH_CHECK_VALUE(basis.device() == W.device(), name, " must be on W's device ", W.device(),
                    ", got ", basis.device());
  const int64_t k = std::min(W.size(-2), W.size(-1));
  std::vector<int64_t> shape(W.sizes().begin(), W.sizes().end() - 2);
  shape.insert(shape.end(), {k, k});
  TORCH_CHECK_VALUE(basis.sizes() == c10::IntArrayRef(shape), name, " must have shape ",
                    c10::IntArrayRef(shape), " (W's batch, then k x k with k = min(m, n)), got ",
                    basis.sizes());
  return basis.contiguous();
}

// The start bases of lowrank_project_groups: none, or one entry (a basis or none) per group of
// W, each checked as above. Returns one entry per group, undefined where there is none.
inline std::vector<at::Tensor> check_start_bases(
    at::TensorList W, const std::optional<c10::List<std::optional<at::Tensor>>>& basis) {
  std::vector<at::Tensor> starts(W.size());
  if (!basis.has_value()) return starts;
  TORCH_CHECK_VALUE(basis->size() == W.size(), "basis must have one entry per group of W (",
                    W.size(), "), got ", basis->size());
  for (size_t i = 0; i < W.size(); ++i) {
    const std::optional<at::Tensor> start = (*basis)[i];
    const std::string where = "basis[" + std::to_string(i) + "]";
    if (start.has_value()) starts[i] = check_start_basis(W[i], *start, where.c_str());
  }
  return starts;
}

inline Scheme parse_scheme(std::string_view scheme) {
  if (scheme == "channel") return Scheme::kChannel;
  if (scheme == "spatial") return Scheme::kSpatial;
  TORCH_CHECK_VALUE(false, "scheme must be 'channel' or 'spatial', got '", scheme, "'");
  return Scheme::kChannel;  // unreachable
}

inline void check_pair(c10::IntArrayRef v, const char* name, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2, name, " must have 2 values, got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= minimum && v[1] >= minimum, name, " must be >= ", minimum, ", got ",
                    v);
}

// Checks the arguments of trp::lowrank_conv2d and returns its geometry.
inline LowRankGeometry check_lowrank_conv2d(const at::Tensor& x, const at::Tensor& weight1,
                                            const at::Tensor& weight2,
                                            const std::optional<at::Tensor>& bias,
                                            c10::IntArrayRef stride, c10::IntArrayRef padding,
                                            c10::IntArrayRef dilation, Scheme scheme) {
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D [batch, channels, height, width], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(weight1.dim() == 4, "weight1 must be 4-D, got shape ", weight1.sizes());
  TORCH_CHECK_VALUE(weight2.dim() == 4, "weight2 must be 4-D, got shape ", weight2.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_TYPE(weight1.scalar_type() == x.scalar_type(), "weight1 has dtype ",
                   weight1.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK_TYPE(weight2.scalar_type() == x.scalar_type(), "weight2 has dtype ",
                   weight2.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK_VALUE(weight1.device() == x.device(), "weight1 is on ", weight1.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_VALUE(weight2.device() == x.device(), "weight2 is on ", weight2.device(),
                    " but x is on ", x.device());
  const int64_t rank = weight1.size(0);
  const int64_t channels = x.size(1);
  TORCH_CHECK_VALUE(weight1.size(1) == channels, "weight1 has ", weight1.size(1),
                    " input channels but x has ", channels, " (groups must be 1)");
  TORCH_CHECK_VALUE(weight2.size(1) == rank, "weight2 has ", weight2.size(1),
                    " input channels but weight1 has rank ", rank);
  if (scheme == Scheme::kChannel) {
    TORCH_CHECK_VALUE(weight2.size(2) == 1 && weight2.size(3) == 1,
                      "channel scheme: weight2 must be [N, r, 1, 1], got ", weight2.sizes());
  } else {
    TORCH_CHECK_VALUE(weight1.size(3) == 1,
                      "spatial scheme: weight1 must be [r, C, kh, 1], got ", weight1.sizes());
    TORCH_CHECK_VALUE(weight2.size(2) == 1,
                      "spatial scheme: weight2 must be [N, r, 1, kw], got ", weight2.sizes());
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight2.size(0), "bias must be [",
                      weight2.size(0), "], got shape ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "bias has dtype ",
                     bias->scalar_type(), " but x has ", x.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), "bias is on ", bias->device(),
                      " but x is on ", x.device());
  }
  const int64_t stride_v[2] = {stride[0], stride[1]};
  const int64_t padding_v[2] = {padding[0], padding[1]};
  const int64_t dilation_v[2] = {dilation[0], dilation[1]};
  const LowRankGeometry g = lowrank_geometry(scheme, stride_v, padding_v, dilation_v);
  const auto [kh, kw] =
      lowrank_kernel_size(scheme, weight1.size(2), weight1.size(3), weight2.size(3));
  TORCH_CHECK_VALUE(conv_out_size(x.size(2), kh, stride[0], padding[0], dilation[0]) > 0 &&
                        conv_out_size(x.size(3), kw, stride[1], padding[1], dilation[1]) > 0,
                    "x of spatial size ", x.size(2), "x", x.size(3),
                    " is smaller than the dilated kernel ", kh, "x", kw, " with padding ",
                    padding);
  return g;
}

}  // namespace trp
