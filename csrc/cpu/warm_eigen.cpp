// The warm-started, rank-aware eigensolver of the CPU projection (docs/svd_paths.md, "Warm
// start").
//
// Why not Jacobi sweeps from the start basis, as on the GPU: on a CPU a cyclic Jacobi sweep
// costs about 9 k^3 scalar flops, more than LAPACK's whole divide-and-conquer eigensolver
// (syevd) on the same matrix, so even the two or three sweeps a warm start needs lose to the
// cold solve. What the warm start does buy on a CPU is knowing where the spectrum that matters
// lives. In TRP training the weights were projected to rank r_prev one step ago and moved by one
// SGD step since, so their Gram matrix has r_prev values of the size of the weights and k - r_prev
// values of the size of the step (about 1e-5 of them, squared), and the energy rule cuts inside
// the first group. The solver therefore:
//
//  1. scans the start basis (the previous eigenvectors, largest first) for the shortest leading
//     block of p columns whose Rayleigh quotients hold the rank rule's cut and leave a rest
//     (trace of G minus their sum) below 5% of the smallest of them, among the blocks small
//     enough to pay (p <= 0.35 k above k = 64: leading_block); none: cold;
//  2. runs subspace iteration on that block (G times the block, columns rescaled by their
//     Rayleigh quotients, Cholesky QR twice): each step shrinks what lies outside the true
//     leading subspace by the ratio of the largest value of the rest to the block's smallest,
//     below 1e-3 in the TRP steps above;
//  3. after two steps, and after each further step (at most kMaxSteps), a Rayleigh-Ritz
//     solve of the p x p projected matrix (a Jacobi method: it is nearly diagonal) gives Ritz
//     pairs (theta_i, x_i) and residuals ||G x_i - theta_i x_i||;
//  4. certifies the result, or gives the matrix to the cold solve:
//      - the rest of the spectrum lies in [0, tail + ||R||] (tail = trace - sum theta, G being
//        positive semi-definite; Weyl's bound with the residual R), strictly below the smallest
//        kept Ritz value, so the Ritz values are the leading eigenvalues, each within ||R||_F;
//      - the rank rule gives the same rank for every spectrum within those bounds, the cold
//        solve's noise flush and rounding of the total included (certified_rank below), so the
//        rank cannot differ from the cold solve's;
//      - the kept subspace is within 1e-7 of the exact one (Davis-Kahan: ||R_kept||_F over the
//        gap between the kept and the dropped values).
//
// All heavy work is BLAS 3 on k x p blocks (gemm, trsm) and one p x p eigensolve per
// Rayleigh-Ritz solve, instead of syevd on k x k. Nothing here depends on the start being
// right: a wrong start fails the certificate (or the scan) and costs the scan and a few steps.

#include "warm_eigen.h"

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "blas.h"

namespace trp::cpu {
namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
constexpr int64_t kChunk = 16;          // start columns per product of the scan
// A usable block: the sum of the rest of the spectrum at most this share of the block's
// smallest Rayleigh quotient (a bound on the convergence rate of the iteration, usually far
// from tight: the rest's largest value sets the rate, and the rest has many small values).
constexpr double kRestRatio = 0.05;
// A column whose Rayleigh quotient is this share of the block's smallest so far starts the
// small part of the spectrum: a block that did not qualify before it will not after it.
constexpr double kDrop = 1e-2;
constexpr double kStartOrthogonality = 1e-6;  // max |Z0^T Z0 - I| of a usable start block
constexpr int64_t kWholeBlockMaxK = 64;  // above: blocks of at most 0.35 k (leading_block)
constexpr int kFirstRitz = 2;           // power steps before the first Rayleigh-Ritz solve
constexpr int kMaxSteps = 6;
// Rayleigh-Ritz: the p x p matrix is nearly diagonal (the block follows the previous
// eigenvectors' order), which a cyclic Jacobi method diagonalises in two or three sweeps, several
// times faster than syevd at these sizes; syevd above kJacobiOrder or without convergence.
constexpr int64_t kJacobiOrder = 96;
constexpr int kJacobiSweeps = 12;
// Bound on the sine of the angle between the kept subspace and the exact one: the projected
// weights (float32 inputs only) differ from the exact projection by at most this, relative, at
// the level of their own float32 rounding and a hundred times inside the warm start's 1e-5.
// Tighter costs a third power step in most TRP steps, for digits float32 does not hold.
constexpr double kSubspaceTolerance = 1e-7;

std::array<std::atomic<int64_t>, 5> counts{};

// Cyclic Jacobi on the symmetric n x n matrix `a` (column-major; its upper triangle is read and
// destroyed), rotations accumulated into `v` (set to the identity first); the eigenvalues in
// `w`, in the order of v's columns. Returns false if it did not converge in kJacobiSweeps
// sweeps. Each rotation updates the upper triangle only (the diagonal pair by the closed form),
// half the matrix work of rotating whole rows and columns, with most accesses down a column.
bool jacobi_eigen(int64_t n, double* a, double* v, double* w) {
  std::fill(v, v + n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) v[i + i * n] = 1.0;
  auto at = [&](int64_t i, int64_t j) -> double& { return a[i + j * n]; };  // i <= j
  // sqrt|a_ii|, kept with the diagonal: the test of a pair, most of a sweep once few rotate,
  // then takes no square root
  for (int64_t i = 0; i < n; ++i) w[i] = std::sqrt(std::abs(at(i, i)));
  for (int sweep = 0; sweep < kJacobiSweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p + 1 < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = at(p, q);
        // the CUDA kernels' relative rule (trp/svd/jacobi_eigen.cuh)
        if (!(std::abs(apq) > 8.0 * kEps * w[p] * w[q])) continue;
        rotated = true;
        const double app = at(p, p), aqq = at(q, q);
        const double theta = (aqq - app) / (2.0 * apq);
        // |theta| > 1e150 only where apq is below 1e-150 of the diagonal: sqrt would overflow
        const double root = std::abs(theta) < 1e150 ? std::sqrt(theta * theta + 1.0)
                                                     : std::abs(theta);
        const double t = std::copysign(1.0, theta) / (std::abs(theta) + root);
        const double c = 1.0 / std::sqrt(1.0 + t * t), sn = t * c;
        // (x, y) <- (c x - sn y, sn x + c y) on the pairs (a_jp, a_jq) of rows j != p, q, read
        // from the upper triangle
        auto rotate = [&](double& x, double& y) {
          const double x0 = x, y0 = y;
          x = c * x0 - sn * y0;
          y = sn * x0 + c * y0;
        };
        for (int64_t j = 0; j < p; ++j) rotate(at(j, p), at(j, q));
        for (int64_t j = p + 1; j < q; ++j) rotate(at(p, j), at(j, q));
        for (int64_t j = q + 1; j < n; ++j) rotate(at(p, j), at(q, j));
        at(p, p) = app - t * apq;
        at(q, q) = aqq + t * apq;
        at(p, q) = 0.0;
        w[p] = std::sqrt(std::abs(at(p, p)));
        w[q] = std::sqrt(std::abs(at(q, q)));
        double* vp = v + p * n;
        double* vq = v + q * n;
        for (int64_t i = 0; i < n; ++i) {
          const double x = vp[i], y = vq[i];
          vp[i] = c * x - sn * y;
          vq[i] = sn * x + c * y;
        }
      }
    }
    if (!rotated) {
      for (int64_t i = 0; i < n; ++i) w[i] = at(i, i);
      return true;
    }
  }
  return false;
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// The rank of the rule for every spectrum consistent with what the solve knows, or nothing if
// two of them give different ranks. `values`: the p resolved eigenvalues (flushed, descending),
// each within `value_error` of the exact one; the other k - p eigenvalues are at most `rest_max`
// and sum to `rest` (`rest_error`: how far the cold solve's total may differ from
// sum(values) + rest, its noise flush and rounding).
std::optional<int64_t> certified_rank(const double* values, int64_t p, int64_t k, double rest,
                                      double rest_max, double value_error, double rest_error,
                                      const RankRule& rule) {
  int64_t lo = k, hi = k;  // the smallest and largest rank any consistent spectrum gets
  if (rule.has_energy) {
    double total = rest;
    for (int64_t i = 0; i < p; ++i) total += values[i];
    const double total_error = rest_error + static_cast<double>(p) * value_error;
    // select_rank's target, with its slack of k eps (trp/rank_rule.h)
    const double share = rule.energy - static_cast<double>(k) * kEps;
    const double target_lo = share * (total - total_error);
    const double target_hi = share * (total + total_error);
    int64_t e_lo = -1, e_hi = -1;
    double running = 0.0;
    for (int64_t j = 1; j <= p; ++j) {
      running += values[j - 1];
      const double err = static_cast<double>(j) * value_error;
      if (e_lo < 0 && running + err >= target_lo) e_lo = j;
      if (e_hi < 0 && running - err >= target_hi) e_hi = j;
    }
    if (e_lo < 0 || e_hi < 0) return std::nullopt;  // the cut may lie outside the block
    lo = std::min(lo, e_lo);
    hi = std::min(hi, e_hi);
  }
  if (rule.has_threshold) {
    const double t2 = rule.threshold * rule.threshold;
    int64_t t_lo = 0, t_hi = 0;
    for (int64_t i = 0; i < p; ++i) {
      t_lo += values[i] - value_error > t2;
      t_hi += values[i] + value_error > t2;
    }
    if (rest_max + value_error > t2) t_hi = k;  // an unresolved value may pass the threshold
    lo = std::min(lo, t_lo);
    hi = std::min(hi, t_hi);
  }
  if (rule.has_max_rank) {
    lo = std::min(lo, rule.max_rank);
    hi = std::min(hi, rule.max_rank);
  }
  if (lo != hi) return std::nullopt;
  return lo;
}

}  // namespace

std::array<int64_t, 5> warm_start_counts(bool reset) {
  std::array<int64_t, 5> out{};
  for (size_t i = 0; i < counts.size(); ++i) {
    out[i] = reset ? counts[i].exchange(0) : counts[i].load();
  }
  return out;
}

void count_warm_outcome(WarmOutcome outcome, int64_t steps) {
  counts[static_cast<int>(outcome)].fetch_add(1, std::memory_order_relaxed);
  if (outcome == WarmOutcome::kAccepted) counts[4].fetch_add(steps, std::memory_order_relaxed);
}

// Step 1: the number p of leading start columns to iterate on, 0 if there is none. Leaves
// t_ = G times those columns (and a few more) and d_ = their Rayleigh quotients.
int64_t WarmEigenSolver::leading_block(const double* g, int64_t k, const double* start,
                                       double trace, const RankRule& rule) {
  // The largest block that pays. Its power steps, Rayleigh-Ritz solve and completion grow as
  // k^2 p and k p^2 and overtake syevd on all of G, on one thread with torch's MKL, near
  // p = 0.35 k for k of 128 to 768 (bench/warm_block_sizes.py: square 192-768 matrices
  // 1.2-1.4x at p = 0.30 k, wide 128 x 1152 to 512 x 4608 ones 0.94-1.06x at 0.37 k, every
  // shape 0.72-0.93x at 0.5 k and above); up to k = 64, where syevd is mostly call overhead and
  // the Rayleigh-Ritz solve a Jacobi method, blocks of 7/8 k still gain in TRP (ResNet-20).
  const int64_t limit = k <= kWholeBlockMaxK ? k - std::max<int64_t>(1, k / 8)
                                             : std::max<int64_t>(1, k * 7 / 20);
  t_.resize(k * k);
  d_.resize(k);
  sorted_.clear();
  // The start's first column outside the allowed blocks: G being positive semi-definite and the
  // start orthonormal, its Rayleigh quotient is part of the rest of every allowed block, and a
  // usable block's rest is at most kRestRatio of its smallest value, itself at most
  // trace / limit. One product with G shows that no allowed block can hold the kept spectrum
  // (the rank is too large for the warm start to pay) before any scan.
  if (limit < k) {
    double* probe = t_.data() + limit * k;
    blas::gemm<double>(blas::kN, blas::kN, k, 1, k, g, k, start + limit * k, k, probe, k);
    const double outside = dot(start + limit * k, probe, k);
    if (outside > kRestRatio * trace / static_cast<double>(limit)) return 0;
  }
  double prefix = 0.0, smallest = std::numeric_limits<double>::infinity();
  for (int64_t j0 = 0; j0 < limit; j0 += kChunk) {
    const int64_t j1 = std::min(j0 + kChunk, limit);
    blas::gemm<double>(blas::kN, blas::kN, k, j1 - j0, k, g, k, start + j0 * k, k,
                       t_.data() + j0 * k, k);
    for (int64_t j = j0; j < j1; ++j) {
      const double d = dot(start + j * k, t_.data() + j * k, k);
      // A column without weight before the cut: the start does not order the spectrum.
      if (!(d > 0.0)) return 0;
      if (j > 0 && d < kDrop * smallest) return 0;
      d_[j] = d;
      prefix += d;
      smallest = std::min(smallest, d);
      sorted_.insert(std::upper_bound(sorted_.begin(), sorted_.end(), d, std::greater<double>()),
                     d);
      const double rest = trace - prefix;
      if (!(rest <= kRestRatio * smallest)) continue;
      // The rule on the block's values and the rest lumped together: does the block hold every
      // kept value?
      rule_values_.assign(sorted_.begin(), sorted_.end());
      rule_values_.push_back(std::max(rest, 0.0));
      const int64_t estimate =
          select_rank(rule_values_.data(), static_cast<int64_t>(rule_values_.size()), rule);
      if (estimate <= j + 1) return j + 1;
    }
    // No block within the limit can leave a rest below kRestRatio of its smallest value if the
    // columns still to come, each at most the last one's value (the start is ordered), cannot
    // bring the rest down to it: stop after a chunk or two, not the whole scan, where the rank
    // is too large for the warm start to pay.
    const double last = d_[j1 - 1];
    const double remaining = static_cast<double>(limit - j1);
    if (trace - prefix > (remaining + kRestRatio) * last) return 0;
  }
  return 0;
}

// Z <- orth(G Z diag(scale)) by two Cholesky QR passes; then tz_ = G Z. z_ holds Z, tz_ G Z.
bool WarmEigenSolver::power_step(const double* g, int64_t k, int64_t p, const double* scale) {
  for (int64_t j = 0; j < p; ++j) {
    const double* from = tz_.data() + j * k;
    double* to = z_.data() + j * k;
    for (int64_t i = 0; i < k; ++i) to[i] = from[i] * scale[j];
  }
  s_.resize(p * p);
  for (int pass = 0; pass < 2; ++pass) {  // the second pass repairs the first's rounding
    blas::gemm<double>(blas::kT, blas::kN, p, p, k, z_.data(), k, z_.data(), k, s_.data(), p);
    if (!blas::cholesky_lower(p, s_.data(), p)) return false;
    blas::solve_right_lower_transposed(k, p, s_.data(), p, z_.data(), k);
  }
  blas::gemm<double>(blas::kN, blas::kN, k, p, k, g, k, z_.data(), k, tz_.data(), k);
  return true;
}

// Ritz pairs of the orthonormal block z_ (tz_ = G z_): theta_ descending, x_ = z_ W, gx_ = tz_ W,
// res_ the residual norms ||gx_j - theta_j x_j||.
void WarmEigenSolver::rayleigh_ritz(int64_t k, int64_t p) {
  s_.resize(p * p);
  blas::gemm<double>(blas::kT, blas::kN, p, p, k, z_.data(), k, tz_.data(), k, s_.data(), p);
  // Z^T G Z is symmetric only to rounding: the lower triangle copied over the upper, so that the
  // Jacobi method (upper) and syevd (lower) solve the same matrix.
  for (int64_t j = 0; j < p; ++j) {
    for (int64_t i = j + 1; i < p; ++i) s_[j + i * p] = s_[i + j * p];
  }
  theta_.resize(p);
  w_.resize(p * p);
  bool solved = false;
  if (p <= kJacobiOrder) {
    rr_.assign(s_.begin(), s_.end());
    if (jacobi_eigen(p, rr_.data(), w_.data(), theta_.data())) {
      // descending, vectors with their values
      order_.resize(p);
      std::iota(order_.begin(), order_.end(), 0);
      std::stable_sort(order_.begin(), order_.end(),
                       [&](int64_t a, int64_t b) { return theta_[a] > theta_[b]; });
      rr_.assign(theta_.begin(), theta_.end());
      for (int64_t j = 0; j < p; ++j) {
        theta_[j] = rr_[order_[j]];
        std::copy_n(w_.data() + order_[j] * p, p, s_.data() + j * p);
      }
      solved = true;
    }
  }
  if (!solved) {
    blas::syevd(p, s_.data(), p, theta_.data(), work_, iwork_);
    // Ascending from syevd: reverse the columns of W and the values.
    for (int64_t j = 0; j < p / 2; ++j) {
      std::swap_ranges(s_.data() + j * p, s_.data() + (j + 1) * p, s_.data() + (p - 1 - j) * p);
      std::swap(theta_[j], theta_[p - 1 - j]);
    }
  }
  // syevd's signs are arbitrary (and a Jacobi rotation may flip one): keep each vector's
  // start's (x_j . z_j = W_jj >= 0), so that a basis carried from step to step does not flip.
  for (int64_t j = 0; j < p; ++j) {
    double* w = s_.data() + j * p;
    if (w[j] < 0.0) {
      for (int64_t i = 0; i < p; ++i) w[i] = -w[i];
    }
  }
  x_.resize(k * p);
  gx_.resize(k * p);
  blas::gemm<double>(blas::kN, blas::kN, k, p, p, z_.data(), k, s_.data(), p, x_.data(), k);
  blas::gemm<double>(blas::kN, blas::kN, k, p, p, tz_.data(), k, s_.data(), p, gx_.data(), k);
  res_.resize(p);
  for (int64_t j = 0; j < p; ++j) {
    const double* x = x_.data() + j * k;
    const double* gx = gx_.data() + j * k;
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      const double r = gx[i] - theta_[j] * x[i];
      sum += r * r;
    }
    res_[j] = std::sqrt(sum);
  }
}

WarmOutcome WarmEigenSolver::solve(const double* g, int64_t k, int64_t long_dim,
                                   const double* start, const RankRule& rule,
                                   std::vector<double>& basis, std::vector<double>& sigma_sq,
                                   int64_t& rank, int64_t& steps) {
  steps = 0;
  for (int64_t i = 0; i < k * k; ++i) {
    if (!std::isfinite(start[i])) return WarmOutcome::kBadStart;
  }
  double trace = 0.0;
  for (int64_t i = 0; i < k; ++i) trace += g[i + i * k];
  if (!(trace > 0.0)) return WarmOutcome::kNoGap;  // all zero: the cold solve is immediate
  const int64_t p = leading_block(g, k, start, trace, rule);
  if (p == 0) return WarmOutcome::kNoGap;

  z_.assign(start, start + k * p);
  s_.resize(p * p);
  blas::gemm<double>(blas::kT, blas::kN, p, p, k, z_.data(), k, z_.data(), k, s_.data(), p);
  for (int64_t j = 0; j < p; ++j) {
    for (int64_t i = j; i < p; ++i) {
      if (std::abs(s_[i + j * p] - (i == j ? 1.0 : 0.0)) > kStartOrthogonality) {
        return WarmOutcome::kBadStart;
      }
    }
  }
  tz_.assign(t_.begin(), t_.begin() + k * p);
  std::vector<double>& scale = d_;  // 1 / Rayleigh quotient of each column
  for (int64_t j = 0; j < p; ++j) scale[j] = 1.0 / d_[j];

  const double floor_ratio = static_cast<double>(long_dim + k) * kEps;
  while (true) {
    if (!power_step(g, k, p, scale.data())) return WarmOutcome::kNotCertified;
    ++steps;
    if (steps < kFirstRitz) {
      for (int64_t j = 0; j < p; ++j) {
        const double q = dot(z_.data() + j * k, tz_.data() + j * k, k);
        if (!(q > 0.0)) return WarmOutcome::kNotCertified;
        scale[j] = 1.0 / q;
      }
      continue;
    }
    rayleigh_ritz(k, p);
    const double lambda1 = theta_[0];
    if (!(lambda1 > 0.0) || !std::isfinite(lambda1)) return WarmOutcome::kNotCertified;
    double residual_sq = 0.0, sum = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      residual_sq += res_[j] * res_[j];
      sum += theta_[j];
    }
    const double residual = std::sqrt(residual_sq);  // >= ||R||_2: each value's error bound
    const double floor = lambda1 * floor_ratio;
    sigma_sq.assign(k, 0.0);
    for (int64_t j = 0; j < p; ++j) sigma_sq[j] = theta_[j] > floor ? theta_[j] : 0.0;
    const double rest = std::max(trace - sum, 0.0);
    const double rest_max = rest + residual;
    // The cold solve's total: its own rounding, and the rest's values it flushes as noise.
    const double flushed = rest_max <= floor ? rest : std::min(rest, (k - p) * floor);
    int64_t near_floor = 0;  // resolved values the cold solve may flush or keep
    for (int64_t j = 0; j < p; ++j) near_floor += std::abs(theta_[j] - floor) <= residual;
    const double rest_error = flushed + static_cast<double>(near_floor) * floor +
                              8.0 * static_cast<double>(k) * kEps * trace;
    const double rest_in_total = rest_max <= floor ? 0.0 : rest;
    const std::optional<int64_t> r = certified_rank(
        sigma_sq.data(), p, k, rest_in_total, rest_max, residual, rest_error, rule);
    bool certified = r.has_value() && *r <= p;
    if (certified && *r > 0) {
      const int64_t kept = *r;
      const double dropped = kept < p ? std::max(theta_[kept], rest_max) : rest_max;
      const double gap = theta_[kept - 1] - dropped - 2.0 * residual;
      double kept_sq = 0.0;
      for (int64_t j = 0; j < kept; ++j) kept_sq += res_[j] * res_[j];
      certified = gap > 0.0 && std::sqrt(kept_sq) <= kSubspaceTolerance * gap;
    }
    if (certified) {
      rank = *r;
      break;
    }
    if (steps >= kMaxSteps) return WarmOutcome::kNotCertified;
    std::swap(z_, x_);
    std::swap(tz_, gx_);
    for (int64_t j = 0; j < p; ++j) {
      if (!(theta_[j] > 0.0)) return WarmOutcome::kNotCertified;
      scale[j] = 1.0 / theta_[j];
    }
  }

  // The new basis: the Ritz vectors, then an orthonormal basis of their complement.
  basis.resize(k * k);
  std::copy(x_.begin(), x_.begin() + k * p, basis.begin());
  std::vector<double>& qr = z_;  // x_'s copy, overwritten by the QR factorisation
  qr.assign(x_.begin(), x_.begin() + k * p);
  tz_.resize(k * k);
  blas::full_q(k, p, qr.data(), k, tz_.data(), tau_, work_);
  std::copy(tz_.begin() + k * p, tz_.end(), basis.begin() + k * p);
  return WarmOutcome::kAccepted;
}

namespace {

std::vector<int64_t> warm_start_counts_op(bool reset) {
  const std::array<int64_t, 5> c = warm_start_counts(reset);
  return {c.begin(), c.end()};
}

}  // namespace

// No tensor arguments: CompositeExplicitAutograd is the kernel every dispatch reaches.
TORCH_LIBRARY_IMPL(trp, CompositeExplicitAutograd, m) {
  m.impl("warm_start_counts", &warm_start_counts_op);
}

}  // namespace trp::cpu
