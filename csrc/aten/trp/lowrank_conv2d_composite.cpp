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

// A backward's gradients with each unselected one (still undefined) made a distinct empty
// tensor: outputs of an op must not alias, and the schema returns tensors. Allocated only for
// the unselected ones.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> unselected_as_empty(
    const at::Tensor& x, std::array<at::Tensor, 4> grads) {
  for (at::Tensor& g : grads) {
    if (!g.defined()) g = x.new_empty({0});
  }
  return {std::move(grads[0]), std::move(grads[1]), std::move(grads[2]), std::move(grads[3])};
}

// The scheme's matrix view of the dense weight as the product M = left * right of the factors:
// channel M [N, C*kh*kw] = weight2 [N, r] * weight1 [r, C*kh*kw]; spatial M [N*kw, C*kh], rows
// (n, j) and columns (c, i), = weight2 [(n, j), r] * weight1 [r, (c, i)].
struct FactorProduct {
  at::Tensor left, right;
};

FactorProduct factor_product(const at::Tensor& weight1, const at::Tensor& weight2,
                             Scheme scheme) {
  const int64_t r = weight1.size(0), n = weight2.size(0), c = weight1.size(1);
  const int64_t kh = weight1.size(2);
  if (scheme == Scheme::kChannel) {
    return {weight2.reshape({n, r}), weight1.reshape({r, c * kh * weight1.size(3)})};
  }
  return {weight2.select(2, 0).permute({0, 2, 1}).reshape({n * weight2.size(3), r}),
          weight1.select(3, 0).reshape({r, c * kh})};
}

// A dense weight as the matrix M of factor_product: [N, C*kh*kw] (channel) or [N*kw, C*kh]
// (spatial) -- in the spatial scheme the transpose of trp_kernels.factorization
// .weight_to_matrix, whose rows are the input side.
at::Tensor weight_as_product_matrix(const at::Tensor& W, Scheme scheme) {
  const int64_t n = W.size(0), c = W.size(1), kh = W.size(2), kw = W.size(3);
  if (scheme == Scheme::kChannel) return W.reshape({n, c * kh * kw});
  return W.permute({0, 3, 1, 2}).reshape({n * kw, c * kh});
}

// The inverse of weight_as_product_matrix, as a view of M.
at::Tensor product_matrix_as_weight(const at::Tensor& M, const at::Tensor& weight1,
                                    const at::Tensor& weight2, Scheme scheme) {
  const int64_t n = weight2.size(0), c = weight1.size(1), kh = weight1.size(2);
  if (scheme == Scheme::kChannel) return M.view({n, c, kh, weight1.size(3)});
  const int64_t kw = weight2.size(3);
  return M.view({n, kw, c, kh}).permute({0, 2, 3, 1});
}

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

// cuDNN takes the channels_last path when the input or the weight is channels_last.
at::Tensor dense_weight_for(const at::Tensor& x, const at::Tensor& weight1,
                            const at::Tensor& weight2, Scheme scheme) {
  return lowrank_full_weight(weight1, weight2, scheme).contiguous(memory_format_of(x));
}

}  // namespace

at::Tensor lowrank_full_weight(const at::Tensor& weight1, const at::Tensor& weight2,
                               Scheme scheme) {
  const FactorProduct f = factor_product(weight1, weight2, scheme);
  return product_matrix_as_weight(at::matmul(f.left, f.right), weight1, weight2, scheme);
}

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
  at::Tensor grad_x, grad_w1, grad_w2, grad_bias;
  const bool need_mid_grad = need_x || need_w1;
  // The bias gradient does not depend on the factors: one reduction, whatever the path.
  if (need_bias) grad_bias = grad_out.sum({0, 2, 3});
  if (has_rank_zero(weight1)) {
    if (need_x) grad_x = at::zeros_like(x, memory_format_of(x));
    if (need_w1) grad_w1 = at::zeros_like(weight1);
    if (need_w2) grad_w2 = at::zeros_like(weight2);
  } else if (need_mid_grad || need_w2) {
    const at::Tensor mid = conv(x, weight1, std::nullopt, geometry.first);
    const Conv2dParams& p2 = geometry.second;
    auto [g_mid, g_w2, unused_bias] = at::convolution_backward(
        grad_out, mid, weight2, std::nullopt, p2.stride, p2.padding, p2.dilation, false, {0, 0},
        1, {need_mid_grad, need_w2, false});
    if (need_w2) grad_w2 = like(g_w2, weight2);
    if (need_mid_grad) {
      const Conv2dParams& p1 = geometry.first;
      auto [g_x, g_w1, unused] = at::convolution_backward(
          g_mid, x, weight1, std::nullopt, p1.stride, p1.padding, p1.dilation, false, {0, 0}, 1,
          {need_x, need_w1, false});
      if (need_x) grad_x = like(g_x, x);
      if (need_w1) grad_w1 = like(g_w1, weight1);
    }
  }
  return unselected_as_empty(x, {grad_x, grad_w1, grad_w2, grad_bias});
}

at::Tensor lowrank_conv2d_dense(const at::Tensor& x, const at::Tensor& weight1,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                                Scheme scheme, const Conv2dParams& layer) {
  return like(conv(x, dense_weight_for(x, weight1, weight2, scheme), bias, layer), x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_dense_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, Scheme scheme, const Conv2dParams& layer,
    std::array<bool, 4> output_mask) {
  const auto [need_x, need_w1, need_w2, need_bias] = output_mask;
  at::Tensor grad_x, grad_w1, grad_w2, grad_bias;
  if (!(need_x || need_w1 || need_w2 || need_bias)) {
    return unselected_as_empty(x, {grad_x, grad_w1, grad_w2, grad_bias});
  }
  const at::Tensor W = dense_weight_for(x, weight1, weight2, scheme);
  auto [g_x, g_W, g_b] = at::convolution_backward(
      grad_out, x, W, c10::IntArrayRef{weight2.size(0)}, layer.stride, layer.padding,
      layer.dilation, false, {0, 0}, 1, {need_x, need_w1 || need_w2, need_bias});
  if (need_x) grad_x = like(g_x, x);
  if (need_bias) grad_bias = g_b;
  if (need_w1 || need_w2) {
    const FactorProduct f = factor_product(weight1, weight2, scheme);
    const at::Tensor g_M = weight_as_product_matrix(g_W, scheme);
    if (need_w1) {
      // d/d right of left * right: left^T g_M, in weight1's [r, C, kh, kw] order.
      grad_w1 = like(at::matmul(f.left.t(), g_M).view(weight1.sizes()), weight1);
    }
    if (need_w2) {
      const at::Tensor g_left = at::matmul(g_M, f.right.t());
      // d/d left: g_M right^T, rows (n[, j]) back to weight2's [N, r, 1, kw] order.
      grad_w2 = scheme == Scheme::kChannel
                    ? g_left.view(weight2.sizes())
                    : g_left.view({weight2.size(0), weight2.size(3), weight1.size(0)})
                          .permute({0, 2, 1})
                          .unsqueeze(2);
      grad_w2 = like(grad_w2, weight2);
    }
  }
  return unselected_as_empty(x, {grad_x, grad_w1, grad_w2, grad_bias});
}

}  // namespace trp
