// The process-wide switch of trp/conv_impl.h and its two ops. It is compiled in every build, so
// that the package sets it the same way with or without CUDA (and a CPU test can read it back).
#include "trp/conv_impl.h"

#include <torch/library.h>

#include <atomic>

namespace trp {
namespace {

// Off by default: an unvalidated kernel is never chosen unless asked for.
std::atomic<bool> fused_in_auto{false};

void set_fused_conv_in_auto_op(bool allowed) { set_fused_conv_in_auto(allowed); }

bool fused_conv_in_auto_op() { return fused_conv_in_auto(); }

}  // namespace

bool fused_conv_in_auto() { return fused_in_auto.load(std::memory_order_relaxed); }

void set_fused_conv_in_auto(bool allowed) {
  fused_in_auto.store(allowed, std::memory_order_relaxed);
}

// No tensor arguments: CompositeExplicitAutograd is the kernel every dispatch reaches.
TORCH_LIBRARY_IMPL(trp, CompositeExplicitAutograd, m) {
  m.impl("set_fused_conv_in_auto", &set_fused_conv_in_auto_op);
  m.impl("fused_conv_in_auto", &fused_conv_in_auto_op);
}

}  // namespace trp
