// The warm-started, rank-aware symmetric eigensolver of the CPU projection (docs/svd_paths.md,
// "Warm start"): the Gram matrix G of a matrix whose previous projection's eigenvectors are
// known, solved only as far as the rank rule and the kept subspace need.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "trp/rank_rule.h"

namespace trp::cpu {

// How a warm solve ended. Anything but kAccepted leaves the matrix to the cold eigensolver.
enum class WarmOutcome : int {
  kAccepted = 0,     // certified: same rank as the cold solve, kept subspace to 1e-7
  kBadStart = 1,     // the start basis holds inf/nan, or its leading columns are not orthonormal
  kNoGap = 2,        // no leading block of the start small enough to pay (at most 0.35 k above
                     // k = 64) holds the kept spectrum with a small rest
  kNotCertified = 3  // the iteration did not certify the rank or the kept subspace in time
};

// Process-wide counts of the outcomes (one per WarmOutcome) and of the power steps taken by
// accepted solves, for the op trp::warm_start_counts.
std::array<int64_t, 5> warm_start_counts(bool reset);
void count_warm_outcome(WarmOutcome outcome, int64_t steps);

// Reusable buffers of one worker thread; one matrix at a time.
class WarmEigenSolver {
 public:
  // g: the k x k Gram matrix (column-major, both triangles), of a k x long_dim matrix;
  // start: the k x k start basis (column-major, columns in the order of the previous
  // eigenvalues, largest first). On kAccepted:
  //   basis    k x k, orthonormal columns: the first `resolved` are eigenvectors of G for the
  //            values in sigma_sq, the others an orthonormal basis of the rest of the space;
  //   sigma_sq k values: the first `resolved` eigenvalues, descending, those at or below the
  //            noise floor (long_dim + k) eps lambda_1 set to zero as the cold solve does;
  //            zeros after;
  //   rank     the rank rule's rank, <= resolved.
  WarmOutcome solve(const double* g, int64_t k, int64_t long_dim, const double* start,
                    const RankRule& rule, std::vector<double>& basis,
                    std::vector<double>& sigma_sq, int64_t& rank, int64_t& steps);

 private:
  int64_t leading_block(const double* g, int64_t k, const double* start, double trace,
                        const RankRule& rule);
  bool power_step(const double* g, int64_t k, int64_t p, const double* scale);
  void rayleigh_ritz(int64_t k, int64_t p);

  std::vector<double> t_, d_, sorted_, rule_values_;
  std::vector<double> z_, tz_, x_, gx_, s_, theta_, res_, work_, tau_, w_, rr_;
  std::vector<int64_t> order_;
  std::vector<int> iwork_;
};

}  // namespace trp::cpu
