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

#include "trp/conv_impl.h"

namespace trp {

// The process-wide switch lives in trp_kernels._C (csrc/aten/trp/conv_impl.cpp); the emulated
// launcher reads it through its op.
bool fused_conv_in_auto() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp::fused_conv_in_auto", "")
                             .typed<bool()>();
  return op.call();
}

}  // namespace trp

#include "aten/trp/lowrank_conv2d_composite.cpp"

#define CUDA PrivateUse1
#include "cuda/lowrank_conv2d_launch.cpp"
#include "cuda/lowrank_project_launch.cpp"
#include "cuda/svd_launch.cpp"
#include "cuda/truncated_svd_launch.cpp"
#undef CUDA
