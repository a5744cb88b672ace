// trp::lowrank_conv2d and its backward on the CPU: two ATen (oneDNN) convolutions each way.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "trp/checks.h"
#include "trp/lowrank_conv2d_composite.h"

namespace trp::cpu {
namespace {

at::Tensor lowrank_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight1,
                              const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, c10::string_view scheme) {
  const LowRankGeometry g = check_lowrank_conv2d(x, weight1, weight2, bias, stride, padding,
                                                 dilation, parse_scheme(scheme));
  return lowrank_conv2d_two_convs(x, weight1, weight2, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, c10::string_view scheme, std::array<bool, 4> output_mask) {
  const LowRankGeometry g = check_lowrank_conv2d(x, weight1, weight2, std::nullopt, stride,
                                                 padding, dilation, parse_scheme(scheme));
  return lowrank_conv2d_two_convs_backward(grad_out, x, weight1, weight2, g, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CPU, m) {
  m.impl("lowrank_conv2d", &lowrank_conv2d_cpu);
  m.impl("lowrank_conv2d_backward", &lowrank_conv2d_backward_cpu);
}

}  // namespace trp::cpu
