// The host-side CUDA API of the emulation: device and function attributes, occupancy, streams'
// capture state and events (device_model.h says what device is modelled).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

#include "cuda_runtime.h"
#include "device_model.h"

struct CUevent_st {
  unsigned flags;
  std::chrono::steady_clock::time_point recorded;
};

namespace cuda_emulation {
namespace {

std::mutex mutex;
std::map<const void*, int> dynamic_shared_limits;  // set by cudaFuncSetAttribute
bool cooperative = true;
int sms = device::kH200SmCount;

}  // namespace

void set_cooperative_launch(bool supported) {
  const std::lock_guard<std::mutex> lock(mutex);
  cooperative = supported;
}

void set_sm_count(int count) {
  const std::lock_guard<std::mutex> lock(mutex);
  sms = count;
}

namespace device {

int sm_count() {
  const std::lock_guard<std::mutex> lock(mutex);
  return sms;
}

bool cooperative_launch_supported() {
  const std::lock_guard<std::mutex> lock(mutex);
  return cooperative;
}

int max_dynamic_shared(const void* kernel) {
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = dynamic_shared_limits.find(kernel);
  return it == dynamic_shared_limits.end() ? kSharedPerBlock : it->second;
}

int blocks_per_sm(int threads, std::size_t dynamic_shared) {
  if (threads <= 0 || threads > kMaxThreadsPerBlock ||
      dynamic_shared > static_cast<std::size_t>(kSharedPerBlockOptin)) {
    return 0;
  }
  const int warps = (threads + 31) / 32;
  const int by_threads = kMaxThreadsPerSm / (warps * 32);
  const int by_shared =
      kSharedPerSm / static_cast<int>(dynamic_shared + kSharedReservedPerBlock);
  return std::min({by_threads, by_shared, kMaxBlocksPerSm});
}

}  // namespace device
}  // namespace cuda_emulation

using namespace cuda_emulation;

cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int d) {
  if (d != 0) return cudaErrorInvalidValue;
  switch (attribute) {
    case cudaDevAttrClockRate: *value = device::kClockRateKhz; break;
    case cudaDevAttrMultiProcessorCount: *value = device::sm_count(); break;
    case cudaDevAttrComputeCapabilityMajor: *value = device::kComputeMajor; break;
    case cudaDevAttrCooperativeLaunch: *value = device::cooperative_launch_supported(); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = device::kSharedPerBlockOptin; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int d) {
  if (d != 0) return cudaErrorInvalidValue;
  *properties = {};
  std::snprintf(properties->name, sizeof(properties->name), "%s", device::kName);
  properties->major = device::kComputeMajor;
  properties->minor = device::kComputeMinor;
  properties->multiProcessorCount = device::sm_count();
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel) {
  if (kernel == nullptr) return cudaErrorInvalidValue;
  *attributes = {0, device::kMaxThreadsPerBlock, device::max_dynamic_shared(kernel)};
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (kernel == nullptr || attribute != cudaFuncAttributeMaxDynamicSharedMemorySize ||
      value < 0 || value > device::kSharedPerBlockOptin) {
    return cudaErrorInvalidValue;
  }
  const std::lock_guard<std::mutex> lock(cuda_emulation::mutex);
  dynamic_shared_limits[kernel] = value;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel,
                                                          int threads,
                                                          std::size_t dynamic_shared) {
  if (kernel == nullptr) return cudaErrorInvalidValue;
  *blocks = device::blocks_per_sm(threads, dynamic_shared);
  return cudaSuccess;
}

// Kernels run to completion at their launch, so no stream is ever being captured, and no work
// is pending anywhere: waits and synchronisations return at once.
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  return event == nullptr ? cudaErrorInvalidResourceHandle : cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  *event = new CUevent_st{flags, {}};
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (event == nullptr) return cudaErrorInvalidResourceHandle;
  event->recorded = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return event == nullptr ? cudaErrorInvalidResourceHandle : cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (start == nullptr || end == nullptr || (start->flags & cudaEventDisableTiming) ||
      (end->flags & cudaEventDisableTiming)) {
    return cudaErrorInvalidResourceHandle;
  }
  *ms = std::chrono::duration<float, std::milli>(end->recorded - start->recorded).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == nullptr) return cudaErrorInvalidResourceHandle;
  delete event;
  return cudaSuccess;
}
