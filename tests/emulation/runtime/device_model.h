// The device the emulation answers queries for: an H200 (sm_90, 132 SMs, 227 KB of shared
// memory per block with the opt-in), so that the launchers size grids and shared memory as they
// would there. What a CPU cannot know -- the registers a kernel needs -- does not limit the
// occupancy computed here (docs/cuda_svd.md, "CPU emulation").
#pragma once

#include <cstddef>

namespace cuda_emulation::device {

constexpr const char* kName = "Emulated NVIDIA H200";
constexpr int kComputeMajor = 9;
constexpr int kComputeMinor = 0;
constexpr int kH200SmCount = 132;
constexpr int kClockRateKhz = 1'980'000;  // the SM clock cudaDevAttrClockRate reports
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kSharedPerBlock = 48 * 1024;          // without the opt-in
constexpr int kSharedPerBlockOptin = 227 * 1024;
constexpr int kSharedPerSm = 228 * 1024;
constexpr int kSharedReservedPerBlock = 1024;       // the runtime's own share per resident block

bool cooperative_launch_supported();
int sm_count();

// The dynamic shared memory `kernel` may be launched with: 48 KB until cudaFuncSetAttribute
// raises it.
int max_dynamic_shared(const void* kernel);

// Blocks of `threads` threads and `dynamic_shared` bytes resident on one SM at once.
int blocks_per_sm(int threads, std::size_t dynamic_shared);

}  // namespace cuda_emulation::device
