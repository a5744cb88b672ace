#include "launch_state.h"

#include <dlfcn.h>

#include <mutex>
#include <vector>

#include "cuda_runtime.h"
#include "device_model.h"

namespace cuda_emulation {
namespace {

std::mutex mutex;
std::vector<LaunchRecord> records;
std::string sticky;                   // the message of the first failed launch
std::string sticky_text;              // cudaGetErrorString's text for it
thread_local cudaError_t last_error = cudaSuccess;

int reject(cudaError_t error) {
  last_error = error;
  return error;
}

}  // namespace

int check_launch(const LaunchConfig& c) {
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (!sticky.empty()) return reject(cudaErrorLaunchFailure);
  }
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  const unsigned long long blocks = 1ull * c.grid.x * c.grid.y * c.grid.z;
  if (threads == 0 || threads > device::kMaxThreadsPerBlock || c.block.z > 64 || blocks == 0 ||
      c.grid.x > 2147483647u || c.grid.y > 65535u || c.grid.z > 65535u) {
    return reject(cudaErrorInvalidConfiguration);
  }
  if (c.dynamic_shared > static_cast<std::size_t>(device::max_dynamic_shared(c.kernel))) {
    return reject(cudaErrorInvalidValue);
  }
  if (c.cooperative) {
    if (!device::cooperative_launch_supported()) return reject(cudaErrorInvalidValue);
    const int per_sm = device::blocks_per_sm(static_cast<int>(threads), c.dynamic_shared);
    if (blocks > 1ull * per_sm * device::sm_count()) {
      return reject(cudaErrorCooperativeLaunchTooLarge);
    }
  }
  return cudaSuccess;
}

void record_launch(const LaunchConfig& c) {
  LaunchRecord r{"", 0, describe(c.site), c.grid.x * c.grid.y * c.grid.z,
                 c.block.x * c.block.y * c.block.z, c.dynamic_shared, c.cooperative};
  Dl_info info{};
  if (dladdr(c.kernel, &info) != 0 && info.dli_fname != nullptr) {
    r.object = info.dli_fname;
    r.offset = reinterpret_cast<uintptr_t>(c.kernel) - reinterpret_cast<uintptr_t>(info.dli_fbase);
  }
  const std::lock_guard<std::mutex> lock(mutex);
  records.push_back(std::move(r));
}

int fail_launch(const LaunchConfig& c, const std::string& message) {
  const std::lock_guard<std::mutex> lock(mutex);
  if (sticky.empty()) {
    sticky = "kernel launched at " + describe(c.site) + ": " + message;
    sticky_text = "unspecified launch failure (emulation: " + sticky + ")";
  }
  last_error = cudaErrorLaunchFailure;
  return cudaErrorLaunchFailure;
}

std::vector<LaunchRecord> launches() {
  const std::lock_guard<std::mutex> lock(mutex);
  return records;
}

void clear_launches() {
  const std::lock_guard<std::mutex> lock(mutex);
  records.clear();
}

std::string fault_message() {
  const std::lock_guard<std::mutex> lock(mutex);
  return sticky;
}

void reset_faults() {
  const std::lock_guard<std::mutex> lock(mutex);
  sticky.clear();
  last_error = cudaSuccess;
}

}  // namespace cuda_emulation

cudaError_t cudaGetLastError() {
  {
    const std::lock_guard<std::mutex> lock(cuda_emulation::mutex);
    if (!cuda_emulation::sticky.empty()) return cudaErrorLaunchFailure;
  }
  const cudaError_t error = cuda_emulation::last_error;
  cuda_emulation::last_error = cudaSuccess;
  return error;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
    case cudaErrorLaunchFailure: {
      const std::lock_guard<std::mutex> lock(cuda_emulation::mutex);
      return cuda_emulation::sticky.empty() ? "unspecified launch failure"
                                             : cuda_emulation::sticky_text.c_str();
    }
  }
  return "unrecognized error code";
}
