// Opting a kernel in to large dynamic shared memory, once per device and kernel (torch-free,
// host side of the .cu files).
//
// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) is per device and function, not per launch:
// setting it to each launch's own size lets two host threads race (A sets 100 KB, B sets 50 KB,
// A launches 100 KB: invalid argument). Setting it once to the most the device allows makes
// every later launch valid, whatever the order of threads.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace trp::cuda {

// Makes `kernel` launchable with `bytes` of dynamic shared memory on the current device.
// Thread-safe; after the first call per (device, kernel) it is a lookup. Returns
// cudaErrorInvalidValue when `bytes` is more than the device allows for the kernel.
inline cudaError_t allow_dynamic_smem(const void* kernel, int64_t bytes) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int64_t> limits;  // (device, kernel) -> bytes
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = limits.find({device, kernel});
  if (it == limits.end()) {
    int optin = 0;
    status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (status != cudaSuccess) return status;
    cudaFuncAttributes attributes{};
    status = cudaFuncGetAttributes(&attributes, kernel);
    if (status != cudaSuccess) return status;
    // The opt-in limit covers static and dynamic shared memory together.
    const int limit = optin - static_cast<int>(attributes.sharedSizeBytes);
    status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    if (status != cudaSuccess) return status;
    it = limits.emplace(std::make_pair(device, kernel), limit).first;
  }
  return bytes <= it->second ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename... Args>
cudaError_t allow_dynamic_smem(void (*kernel)(Args...), int64_t bytes) {
  return allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

}  // namespace trp::cuda
