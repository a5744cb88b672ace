// Host emulation of the CUDA runtime pieces the fused kernel uses (see ../fused_conv_emulation.cpp):
// qualifiers compile away; the threads of a block are cooperative fibers on one OS thread, so
// thread coordinates are plain globals the scheduler sets, and a barrier yields until all its
// threads have arrived.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

using std::max;
using std::min;

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef void* cudaStream_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__

extern uint3 threadIdx, blockIdx, blockDim, gridDim;

struct EmulatedBarrier;
// Suspends the running fiber until `barrier` has moved past `generation`.
void emulated_wait(const EmulatedBarrier* barrier, unsigned long generation);

struct EmulatedBarrier {
  int expected;
  int arrived = 0;
  unsigned long generation = 0;
  void arrive_and_wait() {
    const unsigned long mine = generation;
    if (++arrived == expected) {
      arrived = 0;
      ++generation;
      return;
    }
    emulated_wait(this, mine);
  }
};

extern EmulatedBarrier* emulated_block_barrier;
inline void __syncthreads() { emulated_block_barrier->arrive_and_wait(); }
[[noreturn]] inline void __trap() { std::abort(); }

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
