// Checks of the measured choice's rule (csrc/include/trp/fastest_candidate.h), run by
// tests/ops/test_fastest_candidate.py: prints one line per failed check, then "ok" if none.
#include <cstdio>
#include <string>
#include <vector>

#include "trp/fastest_candidate.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

using trp::CandidateTiming;

std::size_t choose(std::vector<CandidateTiming> c) { return trp::choose_candidate(c); }

}  // namespace

int main() {
  // the fastest wins when no other is within 3%
  expect(choose({{1.00, 2}, {1.10, 1}, {2.0, 1}}) == 0, "fastest, nothing within 3%");
  expect(choose({{1.10, 1}, {1.00, 2}}) == 1, "fastest listed second");
  // within 3%: fewer launches wins, even when slower
  expect(choose({{1.00, 3}, {1.02, 2}, {1.029, 1}}) == 2, "tie: fewest launches");
  expect(choose({{1.00, 3}, {1.031, 1}}) == 0, "just past 3%: no tie");
  // as few launches: the faster of those
  expect(choose({{1.01, 2}, {1.00, 3}, {1.02, 2}}) == 0, "tie on launches: faster");
  expect(choose({{1.00, 2}, {1.00, 2}}) == 0, "equal: the first");
  expect(choose({{0.0, 2}, {0.0, 1}}) == 1, "zero times: a tie");
  expect(choose({{5.0, 4}}) == 0, "one candidate");
  // median
  expect(trp::median({3.0, 1.0, 2.0}) == 2.0, "median of three");
  expect(trp::median({4.0, 1.0, 3.0, 2.0}) == 3.0, "median of four: the upper");
  expect(trp::median({}) == 0.0, "median of none");
  // round orders: each a permutation; over `count` rounds every candidate at every position once
  for (std::size_t count = 1; count <= 4; ++count) {
    std::vector<std::vector<int>> seen(count, std::vector<int>(count, 0));
    for (std::size_t round = 0; round < count; ++round) {
      const std::vector<std::size_t> order = trp::round_order(round, count);
      std::vector<int> once(count, 0);
      for (std::size_t p = 0; p < count; ++p) {
        ++once[order[p]];
        ++seen[order[p]][p];
      }
      for (int n : once) expect(n == 1, "a round runs each candidate once");
    }
    for (const auto& row : seen) {
      for (int n : row) expect(n == 1, "each candidate once at each position");
    }
    expect(trp::round_order(count, count) == trp::round_order(0, count), "orders repeat");
  }
  std::printf("%s\n", failures == 0 ? "ok" : "failed");
  return failures == 0 ? 0 : 1;
}
