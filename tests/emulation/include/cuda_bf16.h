// Host emulation of bfloat16: storage and round-to-nearest-even conversion.
#pragma once
#include "cuda_runtime.h"

struct __nv_bfloat16 {
  uint16_t x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 a, b;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  if (std::isnan(f)) return {uint16_t(0x7fc0)};
  const uint32_t u = __float_as_uint(f);
  return {uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(uint32_t(h.x) << 16); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
