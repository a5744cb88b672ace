// The implementations of trp::lowrank_conv2d, and how a user forces one.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <optional>
#include <string_view>

namespace trp {

enum class ConvImpl : int {
  kFused = 0,     // one CUDA kernel for both convolutions (csrc/cuda/lowrank_conv2d_fused_*.cu)
  kTwoConvs = 1,  // two ATen (cuDNN / oneDNN) convolutions
  kDense = 2,     // the full weight rebuilt from the factors, one ATen convolution
};

inline const char* conv_impl_name(ConvImpl impl) {
  switch (impl) {
    case ConvImpl::kFused:
      return "fused";
    case ConvImpl::kTwoConvs:
      return "two_convs";
    case ConvImpl::kDense:
      return "dense";
  }
  return "unknown";
}

// Whether the automatic choice on CUDA may pick `fused`. Off until the package turns it on:
// trp_kernels/ops/library.py sets it at import from trp_kernels/ops/backends.py (on once a
// committed GPU run has validated the kernel), through the op trp::set_fused_conv_in_auto.
// Forcing TRP_CONV_IMPL=fused runs the kernel either way. Process-wide
// (csrc/aten/trp/conv_impl.cpp).
bool fused_conv_in_auto();
void set_fused_conv_in_auto(bool allowed);

// TRP_CONV_IMPL=fused|two_convs|dense forces an implementation; unset, empty or "auto" leaves
// the choice to the backend (CUDA measures, the CPU uses two_convs). Read on every call, so a
// test or a benchmark can switch it between calls.
inline std::optional<ConvImpl> forced_conv_impl() {
  const char* value = std::getenv("TRP_CONV_IMPL");
  const std::string_view v = value == nullptr ? std::string_view() : std::string_view(value);
  if (v.empty() || v == "auto") return std::nullopt;
  for (ConvImpl impl : {ConvImpl::kFused, ConvImpl::kTwoConvs, ConvImpl::kDense}) {
    if (v == conv_impl_name(impl)) return impl;
  }
  TORCH_CHECK_VALUE(false, "TRP_CONV_IMPL must be auto, fused, two_convs or dense, got '", v,
                    "'");
  return std::nullopt;  // unreachable
}

}  // namespace trp
