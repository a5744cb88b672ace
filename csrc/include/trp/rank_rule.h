// The rank rule (docs/design.md, "Rank rules"), shared by the CPU kernels and the CUDA kernels.
// Plain C++ (no torch): it must compile under nvcc as device code and under g++ as host code.
#pragma once

#include <cfloat>
#include <cstdint>

#if defined(__CUDACC__)
#define TRP_HOST_DEVICE __host__ __device__
#else
#define TRP_HOST_DEVICE
#endif

namespace trp {

// Which criteria are active; an inactive criterion does not restrict the rank.
struct RankRule {
  bool has_energy = false;
  double energy = 1.0;       // keep the smallest r with sum_{i<r} s_i^2 >= energy * sum s^2
                             // (up to the rounding floor of the sum, see select_rank)
  bool has_threshold = false;
  double threshold = 0.0;    // keep s_i > threshold
  bool has_max_rank = false;
  int64_t max_rank = 0;      // r <= max_rank
};

// `sigma_sq` holds the k squared singular values in descending order (non-negative).
// Returns the rank chosen by the rule: the smallest rank that any active criterion allows,
// k when none is active, and 0 for an all-zero matrix.
//
// Energy: the smallest r with sum_{i<r} s_i^2 >= (energy - k * eps) * total, i.e. the
// tail left out may exceed (1 - energy) * total by at most k * eps * total. Why the slack: the
// total is a float64 sum of k non-negative terms, known only to a relative rounding error below
// (k - 1) * eps / 2, so a tail under k * eps * total is indistinguishable from zero. Without it,
// energy = 1 would keep every noise direction whose square happens to change the last bit of
// the sum; with it, energy = 1 keeps the numerical rank. The total is the last value of the
// same running sum the cut scans, so a rounding difference between "sum" and "cumsum" can never
// push the cut past k, and values of a zero tail are never kept (r <= number of nonzero values).
// The Python statement of this rule is trp_kernels/rank_rule.py; keep the two identical.
TRP_HOST_DEVICE inline int64_t select_rank(const double* sigma_sq, int64_t k, const RankRule& rule) {
  if (k == 0 || !(sigma_sq[0] > 0.0)) return 0;
  int64_t r = k;
  if (rule.has_energy) {
    // slack = k * eps exactly (a multiple of a power of two), accumulated with the sum: one
    // eps of relative rounding room per term. (Kept this way rather than k * DBL_EPSILON: that
    // int64 -> double conversion makes ptxas spill in the sm_80 spectrum kernel.)
    double total = 0.0, slack = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      total += sigma_sq[i];
      slack += DBL_EPSILON;
    }
    const double target = (rule.energy - slack) * total;
    double running = 0.0;
    int64_t j = 0;
    while (j < k) {
      running += sigma_sq[j];
      ++j;
      if (running >= target) break;
    }
    r = j;
  }
  if (rule.has_threshold) {
    const double t2 = rule.threshold * rule.threshold;
    int64_t count = 0;
    // s_i > t  <=>  s_i^2 > t^2 for non-negative values; the values are sorted.
    while (count < k && sigma_sq[count] > t2) ++count;
    if (count < r) r = count;
  }
  if (rule.has_max_rank && rule.max_rank < r) r = rule.max_rank;
  return r;
}

}  // namespace trp
