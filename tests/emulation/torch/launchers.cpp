// The ATen launchers of csrc/cuda, compiled against CPU ATen for the emulated device: their
// sources as they are, with the stand-in c10/cuda headers of include/ and the emulated CUDA
// runtime, so that path selection, allocation, grid and shared-memory sizing and the launches
// all run; the GEMMs and convolutions they ask ATen for run on the CPU. One translation unit,
// because each that includes ATen costs a good part of a minute to compile.
//
// The launchers register their kernels for the CUDA dispatch key; here, that key is the emulated
// device's (PrivateUse1), so a CUDA build of trp_kernels._C in the same process keeps its own.
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "trp/conv_choice_store.h"
#include "trp/conv_impl.h"

namespace trp {

// The process-wide switch and the store of measured choices live in trp_kernels._C
// (csrc/aten/trp/conv_impl.cpp, conv_choice_store.cpp); the emulated launcher reaches them
// through their ops.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

bool fused_conv_in_auto() {
  static const auto handle = op<bool()>("trp::fused_conv_in_auto");
  return handle.call();
}

std::optional<std::string> stored_conv_choice(const std::string& key) {
  static const auto handle =
      op<std::optional<std::string>(c10::string_view)>("trp::_stored_conv_choice");
  return handle.call(key);
}

void store_conv_choice(const std::string& key, const std::string& impl,
                       const std::string& details) {
  static const auto handle =
      op<void(c10::string_view, c10::string_view, c10::string_view)>("trp::_store_conv_choice");
  handle.call(key, impl, details);
}

int64_t conv_choice_generation() {
  static const auto handle = op<int64_t()>("trp::_conv_choice_generation");
  return handle.call();
}

}  // namespace trp

#include "aten/trp/lowrank_conv2d_composite.cpp"

#define CUDA PrivateUse1
#include "cuda/lowrank_conv2d_launch.cpp"
#include "cuda/lowrank_project_launch.cpp"
#include "cuda/svd_launch.cpp"
#include "cuda/truncated_svd_launch.cpp"
#undef CUDA
