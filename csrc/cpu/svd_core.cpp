// CPU SVD engine for the TRP ops.
//
// Algorithm, by input dtype:
//  * float32: the Gram matrix of the short side, G = A A^T with A the k x L orientation of the
//    matrix (k = min(m, n), L = max(m, n)), is formed in float64 from the exact float32 values,
//    and LAPACK's symmetric divide-and-conquer eigensolver (syevd) gives G = Q diag(s^2) Q^T.
//    The short-side singular vectors are Q; the long-side ones are A^T q_i / s_i.
//    Accuracy: every eigenvalue of G carries an absolute error of about (L + k) eps64 s_1^2, so
//    s_i is accurate to about 1e-13 s_1^2 / s_i -- far below float32 rounding for every s_i
//    above 1e-8 s_1 -- and the long-side vectors are orthonormal to about eps64 s_1^2/(s_i s_j).
//    Eigenvalues at or below that noise floor are taken as exact zeros (rank-deficient matrices
//    then report exact zeros), and a long-side vector whose singular value is zero is completed
//    by Gram-Schmidt so that the kept factors stay orthonormal. U_r S_r V_r^T equals Q_r Q_r^T A
//    exactly, i.e. the projection is an orthogonal projection of the input.
//    Why: for the wide/tall TRP matrices (16x144 ... 512x4608) the Gram matrix is k^2 L work
//    in a single GEMM and the eigensolver runs on k x k only, which is several times faster
//    than a bidiagonalising SVD of the k x L matrix, at an accuracy float32 outputs cannot tell.
//  * float64: LAPACK's divide-and-conquer SVD (gesdd) on the matrix itself, so the small
//    singular values keep full float64 accuracy (the Gram route would square the condition
//    number, which float64 callers would notice).
//  * float32 with a start basis (the previous projection's eigenvectors): the warm, rank-aware
//    eigensolver of warm_eigen.cpp replaces syevd where it certifies its result (same rank as
//    syevd would give, kept subspace to 1e-7), and syevd runs where it does not.
// LAPACK and BLAS are called on raw pointers (blas.h): a small matrix costs no dispatcher or
// tensor overhead.

#include "svd_core.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>

#include "blas.h"
#include "warm_eigen.h"

extern "C" {
// The calling thread's own BLAS thread count, where the library torch links has the setter
// (MKL's C entry point -- mkl_service.h maps mkl_set_num_threads_local to it, while the lowercase
// symbol is the Fortran one, which takes a pointer; OpenBLAS >= 0.3.27): weak, so a null pointer
// where the library has none. Both return the previous setting, 0 meaning "the process-wide one".
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
int openblas_set_num_threads_local(int) __attribute__((weak));
}

namespace trp::cpu {
namespace {

using blas::gemm;
using blas::kN;
using blas::kT;

// Makes column j of the n-row column-major `basis` a unit vector orthogonal to its columns
// 0..j-1 (already orthonormal). The seed is the canonical vector e_t with the largest component
// outside their span: those squared components sum to n - j, so the largest is >= 1/n and the
// two Gram-Schmidt passes below are numerically safe.
void complete_column(double* basis, int64_t n, int64_t j) {
  int64_t best = 0;
  double best_outside = -1.0;
  for (int64_t t = 0; t < n; ++t) {
    double inside = 0.0;
    for (int64_t c = 0; c < j; ++c) inside += basis[t + c * n] * basis[t + c * n];
    if (1.0 - inside > best_outside) {
      best_outside = 1.0 - inside;
      best = t;
    }
  }
  double* v = basis + j * n;
  std::fill(v, v + n, 0.0);
  v[best] = 1.0;
  for (int pass = 0; pass < 2; ++pass) {  // "twice is enough" for Gram-Schmidt
    for (int64_t c = 0; c < j; ++c) {
      const double* q = basis + c * n;
      double dot = 0.0;
      for (int64_t i = 0; i < n; ++i) dot += q[i] * v[i];
      for (int64_t i = 0; i < n; ++i) v[i] -= dot * q[i];
    }
  }
  double norm = 0.0;
  for (int64_t i = 0; i < n; ++i) norm += v[i] * v[i];
  norm = std::sqrt(norm);
  for (int64_t i = 0; i < n; ++i) v[i] /= norm;
}

// Reusable buffers of one worker thread; one matrix at a time.
class SvdWorkspace {
 public:
  // Fills `out` for the row-major m x n matrix M, warm-started from the column-major k x k
  // basis `start` where it is not null (float32 only); returns false if M holds a non-finite
  // value.
  template <typename scalar_t>
  bool compute(const scalar_t* M, int64_t m, int64_t n, const RankRule& rule,
               const double* start, MatrixSVD& out) {
    const int64_t count = m * n;
    a_.resize(count);
    // An integer OR of comparisons, which the compiler vectorises (std::isfinite it does not).
    int nonfinite = 0;
    for (int64_t i = 0; i < count; ++i) {
      const scalar_t x = M[i];
      a_[i] = static_cast<double>(x);
      nonfinite |= !(std::abs(x) <= std::numeric_limits<scalar_t>::max());
    }
    if (nonfinite) return false;
    out.m = m;
    out.n = n;
    out.k = std::min(m, n);
    out.sigma.assign(out.k, 0.0);
    out.rank = 0;
    out.basis = nullptr;
    if (out.k == 0) return true;
    if constexpr (std::is_same_v<scalar_t, float>) {
      gram_svd(out, rule, start);
    } else {
      lapack_svd(out, rule);
    }
    return true;
  }

 private:
  // The row-major m x n input in a_ is, read column-major, the n x m matrix M^T (ld n).
  void gram_svd(MatrixSVD& out, const RankRule& rule, const double* start) {
    const int64_t m = out.m, n = out.n, k = out.k;
    const int64_t L = std::max(m, n);
    const bool wide = m <= n;  // the short side is the rows of M
    g_.resize(k * k);
    if (wide) {
      gemm<double>(kT, kN, m, m, n, a_.data(), n, a_.data(), n, g_.data(), m);  // M M^T
    } else {
      gemm<double>(kN, kT, n, n, m, a_.data(), n, a_.data(), n, g_.data(), n);  // M^T M
    }
    int64_t r = 0;
    bool solved = false;
    if (start != nullptr) {
      int64_t steps = 0;
      const WarmOutcome outcome =
          warm_.solve(g_.data(), k, L, start, rule, basis_, sigma_sq_, r, steps);
      count_warm_outcome(outcome, steps);
      solved = outcome == WarmOutcome::kAccepted;
    }
    if (!solved) {
      w_.resize(k);
      blas::syevd(k, g_.data(), k, w_.data(), work_, iwork_);
      // Descending order; eigenvalues in the rounding noise of G are exact zeros.
      const double floor = std::max(w_[k - 1], 0.0) * static_cast<double>(L + k) *
                           std::numeric_limits<double>::epsilon();
      sigma_sq_.resize(k);
      basis_.resize(k * k);
      for (int64_t i = 0; i < k; ++i) {
        const double v = w_[k - 1 - i];
        sigma_sq_[i] = v > floor ? v : 0.0;
        std::copy_n(g_.data() + (k - 1 - i) * k, k, basis_.data() + i * k);
      }
      r = select_rank(sigma_sq_.data(), k, rule);
    }
    out.rank = r;
    out.basis = basis_.data();
    for (int64_t i = 0; i < r; ++i) out.sigma[i] = std::sqrt(sigma_sq_[i]);
    if (r == 0) return;
    const double* q = basis_.data();  // short-side vectors, descending: its first r columns
    y_.resize(L * r);  // long-side vectors: M^T q_i (wide) or M q_i (tall), then / s_i
    if (wide) {
      gemm<double>(kN, kN, n, r, m, a_.data(), n, q, m, y_.data(), n);
    } else {
      gemm<double>(kT, kN, m, r, n, a_.data(), n, q, n, y_.data(), m);
    }
    for (int64_t i = 0; i < r; ++i) {
      double* y = y_.data() + i * L;
      if (out.sigma[i] > 0.0) {
        const double inv = 1.0 / out.sigma[i];
        for (int64_t t = 0; t < L; ++t) y[t] *= inv;
      } else {
        complete_column(y_.data(), L, i);
      }
    }
    out.left = wide ? q : y_.data();
    out.right = wide ? y_.data() : q;
  }

  // gesdd on M^T (n x m, column-major, the input as stored): M^T = u diag(s) vt, so
  // U = vt^T (m x k) and V = u (n x k); the short side's (square) is the basis.
  void lapack_svd(MatrixSVD& out, const RankRule& rule) {
    const int64_t m = out.m, n = out.n, k = out.k;
    const int nn = blas::lapack_int(n), nm = blas::lapack_int(m), nk = blas::lapack_int(k);
    y_.resize(n * k);  // u
    g_.resize(k * m);  // vt
    iwork_.resize(8 * k);
    int info = 0;
    double work_query = 0.0;
    at::native::lapackSvd<double, double>('S', nn, nm, a_.data(), nn, out.sigma.data(), y_.data(),
                                          nn, g_.data(), nk, &work_query, -1, nullptr,
                                          iwork_.data(), &info);
    TORCH_CHECK(info == 0, "gesdd workspace query failed with info ", info);
    work_.resize(static_cast<size_t>(work_query));
    at::native::lapackSvd<double, double>('S', nn, nm, a_.data(), nn, out.sigma.data(), y_.data(),
                                          nn, g_.data(), nk, work_.data(),
                                          blas::lapack_int(work_.size()), nullptr, iwork_.data(),
                                          &info);
    TORCH_CHECK(info == 0, "the SVD (gesdd) did not converge, info ", info);
    sigma_sq_.resize(k);
    for (int64_t i = 0; i < k; ++i) sigma_sq_[i] = out.sigma[i] * out.sigma[i];
    const int64_t r = select_rank(sigma_sq_.data(), k, rule);
    out.rank = r;
    std::fill(out.sigma.begin() + r, out.sigma.end(), 0.0);
    basis_.resize(m * k);  // U = vt^T: square (the basis) when m <= n
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t i = 0; i < m; ++i) basis_[i + j * m] = g_[j + i * k];
    }
    out.left = basis_.data();
    out.right = y_.data();
    out.basis = m <= n ? basis_.data() : y_.data();
  }

  std::vector<double> a_, g_, w_, y_, work_, sigma_sq_, basis_;
  std::vector<int> iwork_;
  WarmEigenSolver warm_;
};

}  // namespace

template <typename scalar_t>
void compose_low_rank(const MatrixSVD& svd, bool with_sigma, scalar_t* out) {
  const int64_t m = svd.m, n = svd.n, r = svd.rank;
  if (r == 0) {
    std::fill(out, out + m * n, scalar_t(0));
    return;
  }
  // Factors in the output precision, the right one scaled by sigma for the projection.
  thread_local std::vector<scalar_t> left, right;
  left.assign(svd.left, svd.left + m * r);
  right.resize(n * r);
  for (int64_t j = 0; j < r; ++j) {
    const double scale = with_sigma ? svd.sigma[j] : 1.0;
    for (int64_t i = 0; i < n; ++i) right[i + j * n] = static_cast<scalar_t>(svd.right[i + j * n] * scale);
  }
  // Column-major n x m (= row-major m x n): right_r (n x r) times left_r^T (r x m).
  gemm<scalar_t>(kN, kT, n, m, r, right.data(), n, left.data(), m, out, n);
}

template void compose_low_rank<float>(const MatrixSVD&, bool, float*);
template void compose_low_rank<double>(const MatrixSVD&, bool, double*);

namespace {

struct Task {
  MatrixId id;
  int64_t m, n;
  double cost;  // ~ k^2 L: the Gram product and the eigen/SVD solve both scale with it
};

// Sets the calling thread's BLAS/LAPACK to one thread for the guard's lifetime (where the
// library allows a per-thread setting): the workers already occupy the cores torch may use.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas()
      : mkl_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0),
        openblas_(openblas_set_num_threads_local ? openblas_set_num_threads_local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_);
    if (openblas_set_num_threads_local) openblas_set_num_threads_local(openblas_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int mkl_, openblas_;
};

// Runs `work` on `workers` threads, the caller's and workers - 1 new ones, and rethrows the
// first exception. Plain threads, not at::parallel_for: MKL's symmetric eigensolver (syevd, in
// the MKL 2024.2 of torch 2.13) returns wrong eigenvalues for k >= 512 when it is called from
// inside an OpenMP parallel region -- even from one thread of the team while the others wait, so
// it is no race between our workers -- and right ones from threads outside any OpenMP region.
// tests/ops/test_svd_threads.py holds the kernel to float64 at those sizes on 1, 2 and 4 threads.
void run_workers(int64_t workers, const std::function<void()>& work) {
  std::mutex error_mutex;
  std::exception_ptr error;
  auto guarded = [&] {
    try {
      SingleThreadedBlas one_thread;
      work();
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int64_t i = 1; i < workers; ++i) threads.emplace_back(guarded);
  guarded();
  for (std::thread& thread : threads) thread.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

void batched_svd(at::TensorList inputs, const std::vector<at::Tensor>& starts,
                 const RankRule& rule, const char* name,
                 const std::function<void(MatrixId, const MatrixSVD&)>& emit) {
  TORCH_INTERNAL_ASSERT(starts.empty() || starts.size() == inputs.size());
  std::vector<Task> tasks;
  for (int64_t t = 0; t < static_cast<int64_t>(inputs.size()); ++t) {
    const at::Tensor& W = inputs[t];
    TORCH_INTERNAL_ASSERT(W.is_contiguous() && W.dim() >= 2);
    const int64_t m = W.size(-2), n = W.size(-1);
    const int64_t count = c10::multiply_integers(W.sizes().slice(0, W.dim() - 2));
    const double k = static_cast<double>(std::min(m, n)), L = static_cast<double>(std::max(m, n));
    for (int64_t b = 0; b < count; ++b) tasks.push_back({{t, b}, m, n, k * k * L});
  }
  // Largest first, claimed one at a time: close to the best schedule for a few big matrices
  // and many small ones (longest-processing-time rule).
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  std::mutex bad_mutex;
  std::optional<MatrixId> first_bad;
  auto work = [&]() {
    SvdWorkspace ws;
    MatrixSVD svd;
    std::vector<double> start;  // column-major copy of the matrix's start basis
    for (int64_t i = next.fetch_add(1); i < static_cast<int64_t>(tasks.size());
         i = next.fetch_add(1)) {
      const Task& task = tasks[i];
      const at::Tensor& W = inputs[task.id.tensor];
      const double* start_ptr = nullptr;
      if (!starts.empty() && starts[task.id.tensor].defined() && W.scalar_type() == at::kFloat) {
        const int64_t k = std::min(task.m, task.n);
        const double* rows = starts[task.id.tensor].const_data_ptr<double>() + task.id.index * k * k;
        start.resize(k * k);
        transpose_square(rows, k, start.data());
        start_ptr = start.data();
      }
      bool finite = true;
      AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "trp_batched_svd", [&] {
        const scalar_t* data = W.const_data_ptr<scalar_t>() + task.id.index * task.m * task.n;
        finite = ws.compute(data, task.m, task.n, rule, start_ptr, svd);
      });
      if (!finite) {
        std::lock_guard<std::mutex> lock(bad_mutex);
        if (!first_bad || std::tie(task.id.tensor, task.id.index) <
                              std::tie(first_bad->tensor, first_bad->index)) {
          first_bad = task.id;
        }
        continue;
      }
      emit(task.id, svd);
    }
  };
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), tasks.size());
  if (workers <= 1) {
    work();  // in the caller's thread, where BLAS/LAPACK may use the intra-op threads
  } else {
    run_workers(workers, work);
  }
  if (first_bad) {
    const std::string where = inputs.size() == 1
                                  ? std::string(name)
                                  : std::string(name) + "[" + std::to_string(first_bad->tensor) + "]";
    TORCH_CHECK_VALUE(false, where, " holds non-finite values (inf or nan) in matrix ",
                      first_bad->index, " of the batch");
  }
}

}  // namespace trp::cpu
