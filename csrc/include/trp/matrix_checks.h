// Device-side input checks shared by the CUDA ops (plain C++ declarations; see
// csrc/cuda/matrix_checks.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace trp::cuda {

// flags[b] = 1 if matrix b (of `elems` contiguous values) holds a non-finite value, else 0.
// Runs on `stream` without synchronising; the caller decides when (or whether) to look.
template <typename T>
cudaError_t launch_nonfinite_flags(const T* data, int64_t batch, int64_t elems, int32_t* flags,
                                   cudaStream_t stream);

}  // namespace trp::cuda
