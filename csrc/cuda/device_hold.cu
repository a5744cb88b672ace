// The hold kernel of trp/device_hold.h.
#include "trp/cuda_utils.cuh"
#include "trp/device_hold.h"
#include "trp/kernel_launch.h"

namespace trp::cuda {
namespace {

__global__ void device_hold_kernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

}  // namespace

cudaError_t launch_device_hold(long long cycles, cudaStream_t stream) {
  TRP_LAUNCH(device_hold_kernel, 1, 1, 0, stream)(cycles);
  return TRP_LAUNCH_STATUS();
}

}  // namespace trp::cuda
