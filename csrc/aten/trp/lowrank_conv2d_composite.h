// trp::lowrank_conv2d as compositions of ATen ops, on any device: `two_convs` (the CPU kernel,
// and an implementation on CUDA) and `dense` (the full weight rebuilt from the factors, one
// convolution; an implementation on both).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "trp/conv/conv_geometry.h"

namespace trp {

// The layout of an op's output or gradient: channels_last when `t` is channels_last and not
// also plain contiguous, else contiguous. Mirrored by `memory_format_of` in
// trp_kernels/ops/library.py, so the fake kernels predict the real strides.
inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// The layer's own geometry (that of the dense conv the factors replace).
inline Conv2dParams conv2d_params(c10::IntArrayRef stride, c10::IntArrayRef padding,
                                  c10::IntArrayRef dilation) {
  return {{stride[0], stride[1]}, {padding[0], padding[1]}, {dilation[0], dilation[1]}};
}

at::Tensor lowrank_conv2d_two_convs(const at::Tensor& x, const at::Tensor& weight1,
                                    const at::Tensor& weight2,
                                    const std::optional<at::Tensor>& bias,
                                    const LowRankGeometry& geometry);

// Recomputes the r-channel intermediate instead of storing it (it is as large as the output of
// a dense conv with r filters). Unselected gradients are returned as empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_two_convs_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, const LowRankGeometry& geometry, std::array<bool, 4> output_mask);

// The dense [N, C, kh, kw] weight the factor pair represents (docs/design.md, "The schemes").
at::Tensor lowrank_full_weight(const at::Tensor& weight1, const at::Tensor& weight2,
                               Scheme scheme);

at::Tensor lowrank_conv2d_dense(const at::Tensor& x, const at::Tensor& weight1,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                                Scheme scheme, const Conv2dParams& layer);

// One convolution backward with the rebuilt weight; its weight gradient reaches the factors by
// the product rule (grad_weight1 = weight2^T grad_W, grad_weight2 = grad_W weight1^T in the
// scheme's matrix view).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_dense_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, Scheme scheme, const Conv2dParams& layer,
    std::array<bool, 4> output_mask);

}  // namespace trp
