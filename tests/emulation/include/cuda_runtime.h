// The CUDA runtime as the emulation provides it to a host compiler (cuda_emulation.h): what the
// kernels of csrc/cuda and their launch functions use, with the values of the real API.
// Qualifiers compile away; `__shared__` variables are function statics, one per kernel, which is
// one per block because ordinary launches run their blocks one after another (a cooperative
// launch runs its blocks together, so its kernel may only use dynamic shared memory).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_emulation.h"

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

using std::max;
using std::min;
using std::copysign;
using std::fabs;
using std::fmax;
using std::frexp;
using std::hypot;
using std::isfinite;
using std::isnan;
using std::ldexp;
using std::sqrt;

// ---- Types ----------------------------------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
// The attributes the launchers ask for.
enum cudaDeviceAttr : int {
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaStreamCaptureStatus : int {
  cudaStreamCaptureStatusNone = 0,
};
struct cudaFuncAttributes {
  std::size_t sharedSizeBytes;  // static shared memory: 0 here (the emulation cannot know it)
  int maxThreadsPerBlock;
  int maxDynamicSharedSizeBytes;
};
// The fields of the device's properties the launchers read.
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  int multiProcessorCount;
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(2) uchar2 {
  unsigned char x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uchar2 make_uchar2(unsigned char x, unsigned char y) { return {x, y}; }

// ---- Device functions -----------------------------------------------------------------------

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  cuda_emulation::block_barrier(cuda_emulation::BarrierKind::kSync, 1, site);
}
inline int __syncthreads_or(int p, std::source_location site = std::source_location::current()) {
  return cuda_emulation::block_barrier(cuda_emulation::BarrierKind::kOr, p, site);
}
inline int __syncthreads_and(int p, std::source_location site = std::source_location::current()) {
  return cuda_emulation::block_barrier(cuda_emulation::BarrierKind::kAnd, p, site);
}
inline int __syncthreads_count(int p,
                               std::source_location site = std::source_location::current()) {
  return cuda_emulation::block_barrier(cuda_emulation::BarrierKind::kCount, p, site);
}

namespace cuda_emulation {
// Lane `lane`'s contribution to the last exchange, as T.
template <typename T>
T exchanged(const unsigned char* all, unsigned lane) {
  T v;
  std::memcpy(&v, all + lane * kMaxExchangeBytes, sizeof(T));
  return v;
}
inline unsigned lane_id() { return linear_thread() % kWarpSize; }
// The value of lane `source` of the caller's width-lane segment, or the caller's own when
// `source` is outside it (as __shfl_*_sync do).
template <typename T>
T shuffle(unsigned mask, T v, int source, int width, const char* what,
          std::source_location site) {
  static_assert(sizeof(T) <= kMaxExchangeBytes && std::is_trivially_copyable_v<T>);
  const unsigned char* all = warp_exchange(mask, what, &v, sizeof(T), site);
  const int base = static_cast<int>(lane_id()) / width * width;
  if (source < 0 || source >= width) return v;
  return exchanged<T>(all, static_cast<unsigned>(base + source));
}
}  // namespace cuda_emulation

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32,
              std::source_location site = std::source_location::current()) {
  return cuda_emulation::shuffle(mask, v, ((src % width) + width) % width, width, "__shfl_sync",
                                 site);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  std::source_location site = std::source_location::current()) {
  const int lane = static_cast<int>(cuda_emulation::lane_id()) % width;
  return cuda_emulation::shuffle(mask, v, lane ^ lane_mask, width, "__shfl_xor_sync", site);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   std::source_location site = std::source_location::current()) {
  const int lane = static_cast<int>(cuda_emulation::lane_id()) % width;
  return cuda_emulation::shuffle(mask, v, lane + static_cast<int>(delta), width,
                                 "__shfl_down_sync", site);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 std::source_location site = std::source_location::current()) {
  const int lane = static_cast<int>(cuda_emulation::lane_id()) % width;
  return cuda_emulation::shuffle(mask, v, lane - static_cast<int>(delta), width,
                                 "__shfl_up_sync", site);
}
inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location site = std::source_location::current()) {
  const int mine = predicate != 0;
  const unsigned char* all =
      cuda_emulation::warp_exchange(mask, "__ballot_sync", &mine, sizeof mine, site);
  unsigned ballot = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) && cuda_emulation::exchanged<int>(all, lane)) ballot |= 1u << lane;
  }
  return ballot;
}
inline int __any_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, predicate, site) != 0;
}
inline int __all_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, predicate, site) == mask;
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location site = std::source_location::current()) {
  cuda_emulation::warp_exchange(mask, "__syncwarp", nullptr, 0, site);
}

// Atomics: one OS thread runs every fiber, but the accesses are made atomic all the same.
template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}
template <typename T>
T atomicOr(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_or(v);
}
template <typename T>
T atomicMax(T* address, T v) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < v && !ref.compare_exchange_weak(old, v)) {
  }
  return old;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
[[noreturn]] inline void __trap(std::source_location site = std::source_location::current()) {
  cuda_emulation::fault("__trap() called at " + cuda_emulation::describe(site));
}
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
// The SM clock. The emulation keeps no device time (a kernel runs to completion when it is
// launched), so every read moves the clock on by a millisecond of cudaDevAttrClockRate's cycles:
// a kernel that spins until N cycles have passed ends after N / kClockStep reads.
namespace cuda_emulation {
constexpr long long kClockStep = 1'980'000;  // 1 ms at the H200's 1980 MHz
}  // namespace cuda_emulation
inline long long clock64() {
  static std::atomic<long long> now{0};
  return now.fetch_add(cuda_emulation::kClockStep) + cuda_emulation::kClockStep;
}

// ---- Host API -------------------------------------------------------------------------------

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel,
                                                          int threads,
                                                          std::size_t dynamic_shared);

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*kernel)(P...),
                                                          int threads,
                                                          std::size_t dynamic_shared) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(kernel), threads, dynamic_shared);
}

namespace cuda_emulation {

// What trp/kernel_launch.h's TRP_LAUNCH becomes: launch(kernel, grid, block, bytes, stream)
// is the `kernel<<<grid, block, bytes, stream>>>` part, the call operator the argument list.
template <typename... P>
class Launch {
 public:
  Launch(void (*kernel)(P...), LaunchConfig config) : kernel_(kernel), config_(config) {}
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong argument count");
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    run_grid(config_, [&] { std::apply(kernel_, params); });
  }

 private:
  void (*kernel_)(P...);
  LaunchConfig config_;
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t bytes,
                    cudaStream_t, std::source_location site = std::source_location::current()) {
  return Launch<P...>(kernel, {reinterpret_cast<const void*>(kernel), grid, block, bytes, false,
                               site});
}

}  // namespace cuda_emulation

// The C++ overload of the runtime: the parameters' types come from the kernel's signature.
template <typename... P>
cudaError_t cudaLaunchCooperativeKernel(
    void (*kernel)(P...), dim3 grid, dim3 block, void** args, std::size_t bytes = 0,
    cudaStream_t = nullptr, std::source_location site = std::source_location::current()) {
  const cuda_emulation::LaunchConfig config{reinterpret_cast<const void*>(kernel), grid, block,
                                            bytes, true, site};
  return static_cast<cudaError_t>(
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        const std::tuple<std::decay_t<P>...> params(
            *static_cast<std::decay_t<P>*>(args[I])...);
        return cuda_emulation::run_grid(config, [&] { std::apply(kernel, params); });
      }(std::index_sequence_for<P...>{}));
}
