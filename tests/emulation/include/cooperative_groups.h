// cooperative_groups as the emulation provides it (cuda_emulation.h): the grid of a cooperative
// launch and its barrier.
#pragma once

#include "cuda_runtime.h"

namespace cooperative_groups {

class grid_group {
 public:
  void sync(std::source_location site = std::source_location::current()) const {
    cuda_emulation::grid_barrier(site);
  }
};

inline grid_group this_grid() { return {}; }

}  // namespace cooperative_groups
