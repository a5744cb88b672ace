// trp::lowrank_conv2d and its backward on the CPU: two ATen (oneDNN) convolutions each way, or
// with TRP_CONV_IMPL=dense one convolution with the rebuilt weight (conv_impl.h). There is no
// fused CPU kernel; TRP_CONV_IMPL=fused means two_convs here.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "trp/checks.h"
#include "trp/conv_impl.h"
#include "trp/lowrank_conv2d_composite.h"

namespace trp::cpu {
namespace {

bool dense_forced() { return forced_conv_impl() == ConvImpl::kDense; }

at::Tensor lowrank_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight1,
                              const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, c10::string_view scheme_name) {
  const Scheme scheme = parse_scheme(scheme_name);
  const LowRankGeometry g =
      check_lowrank_conv2d(x, weight1, weight2, bias, stride, padding, dilation, scheme);
  if (dense_forced()) {
    return lowrank_conv2d_dense(x, weight1, weight2, bias, scheme,
                                conv2d_params(stride, padding, dilation));
  }
  return lowrank_conv2d_two_convs(x, weight1, weight2, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, c10::string_view scheme_name, std::array<bool, 4> output_mask) {
  const Scheme scheme = parse_scheme(scheme_name);
  const LowRankGeometry g = check_lowrank_conv2d(x, weight1, weight2, std::nullopt, stride,
                                                 padding, dilation, scheme);
  if (dense_forced()) {
    return lowrank_conv2d_dense_backward(grad_out, x, weight1, weight2, scheme,
                                         conv2d_params(stride, padding, dilation), output_mask);
  }
  return lowrank_conv2d_two_convs_backward(grad_out, x, weight1, weight2, g, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CPU, m) {
  m.impl("lowrank_conv2d", &lowrank_conv2d_cpu);
  m.impl("lowrank_conv2d_backward", &lowrank_conv2d_backward_cpu);
}

}  // namespace trp::cpu
