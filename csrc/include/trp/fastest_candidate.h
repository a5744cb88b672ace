// The rule of the measured implementation choice (csrc/aten/trp/measured_choice.h), as plain
// C++ so that it is tested on its own (tests/ops/test_fastest_candidate.py).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace trp {

// What the measurement found for one candidate: the median of its device times over the rounds,
// and how many kernels it launches (fewer: less host work, fewer chances to wait).
struct CandidateTiming {
  double device_ms;
  int launches;
};

// Two candidates within this fraction of the fastest median are a tie.
constexpr double kTieFraction = 0.03;

// The index of the candidate to choose: the fastest by median device time; among those within
// kTieFraction of it, the one with the fewest launches, the faster of those with as few.
inline std::size_t choose_candidate(const std::vector<CandidateTiming>& candidates) {
  std::size_t fastest = 0;
  for (std::size_t i = 1; i < candidates.size(); ++i) {
    if (candidates[i].device_ms < candidates[fastest].device_ms) fastest = i;
  }
  const double limit = candidates[fastest].device_ms * (1.0 + kTieFraction);
  std::size_t chosen = fastest;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const CandidateTiming& c = candidates[i];
    if (c.device_ms > limit) continue;
    const CandidateTiming& best = candidates[chosen];
    const bool fewer = c.launches < best.launches;
    if (fewer || (c.launches == best.launches && c.device_ms < best.device_ms)) {
      chosen = i;
    }
  }
  return chosen;
}

// The median of `values` (the upper one of an even count); 0 for none.
inline double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

// The order in which round `round` runs `count` candidates: each round starts one candidate
// later than the one before, so that none always runs first after the hold (a cold cache, a
// clock still rising) or always last.
inline std::vector<std::size_t> round_order(std::size_t round, std::size_t count) {
  std::vector<std::size_t> order(count);
  for (std::size_t position = 0; position < count; ++position) {
    order[position] = (position + round) % count;
  }
  return order;
}

}  // namespace trp
