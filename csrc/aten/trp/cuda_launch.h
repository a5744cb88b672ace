// Launcher-side helpers (ATen + c10/cuda, no cuBLAS/cuSPARSE headers, so that launchers also
// compile on machines whose torch is CPU-only; see CMakeLists.txt).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime_api.h>

// Turns a cudaError_t returned by a torch-free launch function into a c10::Error.
#define TRP_CUDA_CHECK(expr)                                                          \
  do {                                                                                \
    const cudaError_t trp_status_ = (expr);                                           \
    TORCH_CHECK(trp_status_ == cudaSuccess, "CUDA error in ", #expr, ": ",            \
                cudaGetErrorString(trp_status_));                                     \
  } while (0)

namespace trp {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

}  // namespace trp
