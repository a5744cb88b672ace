#include "trp/lowrank_conv2d_composite.h"

namespace trp {
namespace {

at::Tensor conv(const at::Tensor& input, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, const Conv2dParams& p) {
  return at::convolution(input, weight, bias, p.stride, p.padding, p.dilation,
                         /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1);
}

// Gradients keep the memory format of the tensor they belong to, as the fake kernels promise.
at::Tensor like(const at::Tensor& grad, const at::Tensor& of) {
  return grad.contiguous(memory_format_of(of));
}

bool has_rank_zero(const at::Tensor& weight1) { return weight1.size(0) == 0; }

// A rank-0 factor pair (the decomposition of an all-zero weight) has no channels to convolve,
// which ATen's convolution rejects; its output is the bias alone.
at::Tensor rank_zero_output(const at::Tensor& x, const at::Tensor& weight1,
                            const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                            const LowRankGeometry& g) {
  int64_t h = x.size(2), w = x.size(3);
  for (const auto& [weight, p] : {std::pair{&weight1, &g.first}, std::pair{&weight2, &g.second}}) {
    h = conv_out_size(h, weight->size(2), p->stride[0], p->padding[0], p->dilation[0]);
    w = conv_out_size(w, weight->size(3), p->stride[1], p->padding[1], p->dilation[1]);
  }
  at::Tensor out = at::zeros({x.size(0), weight2.size(0), h, w},
                             x.options().memory_format(memory_format_of(x)));
  if (bias.has_value() && bias->defined()) out.add_(bias->view({1, -1, 1, 1}));
  return out;
}

}  // namespace

at::Tensor lowrank_conv2d_two_convs(const at::Tensor& x, const at::Tensor& weight1,
                                    const at::Tensor& weight2,
                                    const std::optional<at::Tensor>& bias,
                                    const LowRankGeometry& geometry) {
  if (has_rank_zero(weight1)) return rank_zero_output(x, weight1, weight2, bias, geometry);
  const at::Tensor mid = conv(x, weight1, std::nullopt, geometry.first);
  return like(conv(mid, weight2, bias, geometry.second), x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_two_convs_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, const LowRankGeometry& geometry, std::array<bool, 4> output_mask) {
  const auto [need_x, need_w1, need_w2, need_bias] = output_mask;
  // Unselected gradients are distinct empty tensors: outputs of an op must not alias.
  at::Tensor grad_x = x.new_empty({0}), grad_w1 = x.new_empty({0}), grad_w2 = x.new_empty({0}),
             grad_bias = x.new_empty({0});
  const bool need_mid_grad = need_x || need_w1;
  if (has_rank_zero(weight1)) {
    if (need_x) grad_x = at::zeros_like(x, memory_format_of(x));
    if (need_w1) grad_w1 = at::zeros_like(weight1);
    if (need_w2) grad_w2 = at::zeros_like(weight2);
    if (need_bias) grad_bias = grad_out.sum({0, 2, 3});
  } else if (need_mid_grad || need_w2) {
    const at::Tensor mid = conv(x, weight1, std::nullopt, geometry.first);
    const Conv2dParams& p2 = geometry.second;
    auto [g_mid, g_w2, g_b] = at::convolution_backward(
        grad_out, mid, weight2, c10::IntArrayRef{weight2.size(0)}, p2.stride, p2.padding,
        p2.dilation, false, {0, 0}, 1, {need_mid_grad, need_w2, need_bias});
    if (need_w2) grad_w2 = like(g_w2, weight2);
    if (need_bias) grad_bias = g_b;
    if (need_mid_grad) {
      const Conv2dParams& p1 = geometry.first;
      auto [g_x, g_w1, unused] = at::convolution_backward(
          g_mid, x, weight1, std::nullopt, p1.stride, p1.padding, p1.dilation, false, {0, 0}, 1,
          {need_x, need_w1, false});
      if (need_x) grad_x = like(g_x, x);
      if (need_w1) grad_w1 = like(g_w1, weight1);
    }
  } else if (need_bias) {
    grad_bias = grad_out.sum({0, 2, 3});
  }
  return {grad_x, grad_w1, grad_w2, grad_bias};
}

}  // namespace trp
