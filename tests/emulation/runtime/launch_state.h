// What the emulation keeps about launches besides running them: their validity as the device
// would judge it, the record of every launch, the last error and the sticky fault.
#pragma once

#include <string>

#include "cuda_emulation.h"

namespace cuda_emulation {

// cudaSuccess, or the error the device would give the launch (recorded for cudaGetLastError).
int check_launch(const LaunchConfig& config);
void record_launch(const LaunchConfig& config);
// Records `message` as the sticky fault of the launch; returns cudaErrorLaunchFailure.
int fail_launch(const LaunchConfig& config, const std::string& message);

}  // namespace cuda_emulation
