// trp::lowrank_conv2d as two ATen convolutions, on any device. It is the CPU kernel and the
// `two_convs` implementation on CUDA.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "trp/conv_geometry.h"

namespace trp {

// The layout of an op's output or gradient: channels_last when `t` is channels_last and not
// also plain contiguous, else contiguous. Mirrored by `memory_format_of` in trp_kernels/_ops.py,
// so the fake kernels predict the real strides.
inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
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

}  // namespace trp
