// Host emulation of float16 through the compiler's _Float16.
#pragma once
#include "cuda_runtime.h"

struct __half {
  uint16_t x;
};
struct alignas(4) __half2 {
  __half a, b;
};
inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.x, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, 2);
  return static_cast<float>(v);
}
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
