// A kernel that keeps the device busy for a given number of SM clock cycles. The measured
// implementation choice (csrc/aten/trp/measured_choice.h) queues it ahead of its timed runs, so
// that the host has queued them all before the device reaches them, and their events time the
// device alone. Plain C++: shared by the .cu file and the launchers.
#pragma once

#include <cuda_runtime_api.h>

namespace trp::cuda {

// Launches one thread on `stream` that spins until `cycles` SM clock cycles (clock64) have
// passed since it started.
cudaError_t launch_device_hold(long long cycles, cudaStream_t stream);

}  // namespace trp::cuda
