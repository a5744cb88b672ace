// Every matrix enters the CUDA SVD multiplied by an exact power of two, 2^-e, chosen so that its
// largest finite magnitude lies in [0.5, 1). Its float64 Gram matrices then cannot overflow for
// any finite input (entries <= max(m, n)), and nothing above eps * s_1 underflows. Singular
// values are multiplied back by 2^e at the end, exactly; the threshold of the rank rule is
// compared in the scaled domain, so the rule sees the same comparisons as unscaled values.
#pragma once

#include <cmath>
#include <cstdint>

#include "trp/rank_rule.h"

namespace trp::cuda {

// e with max_abs = f * 2^e, f in [0.5, 1); 0 for max_abs = 0.
__host__ __device__ inline int scale_exponent(double max_abs) {
  int e = 0;
  frexp(max_abs, &e);
  return max_abs > 0.0 ? e : 0;
}

// Non-negative doubles order like their bit patterns, so a per-matrix maximum can be kept as an
// unsigned 64-bit integer with atomicMax.
__device__ inline double max_abs_from_bits(unsigned long long bits) {
  return __longlong_as_double(static_cast<long long>(bits));
}

__device__ inline unsigned long long max_abs_to_bits(double max_abs) {
  return static_cast<unsigned long long>(__double_as_longlong(max_abs));
}

// The rule as seen by singular values scaled by 2^-e.
__host__ __device__ inline RankRule scaled_rank_rule(RankRule rule, int exponent) {
  rule.threshold = ldexp(rule.threshold, -exponent);
  return rule;
}

}  // namespace trp::cuda
