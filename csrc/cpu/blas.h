// Thin column-major BLAS/LAPACK wrappers for the CPU SVD engine (svd_core.cpp, warm_eigen.cpp),
// on raw pointers: the BLAS through its standard Fortran entry points, LAPACK through ATen's
// wrappers, all resolved from the library torch links (MKL or OpenBLAS). A small matrix costs
// no dispatcher or tensor overhead. Only routines torch itself uses are exported by its MKL
// (gemm and trsm, not syrk or symm), so symmetric products are plain GEMMs here. Never call
// these from inside an OpenMP parallel region (svd_core.cpp, run_workers, says why).
#pragma once

#include <ATen/native/BatchLinearAlgebra.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

extern "C" {
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dtrsm_(const char* side, const char* uplo, const char* transa, const char* diag,
            const int* m, const int* n, const double* alpha, const double* a, const int* lda,
            double* b, const int* ldb);
}

namespace trp::cpu::blas {

inline int lapack_int(int64_t v) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(), "matrix dimension ", v,
              " is too large for LAPACK");
  return static_cast<int>(v);
}

constexpr char kN = 'N';
constexpr char kT = 'T';
constexpr char kLower = 'L';

// C = op(A) op(B), in float32 or float64.
template <typename T>
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
          const T* b, int64_t ldb, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t j = 0; j < n; ++j) std::fill_n(c + j * ldc, m, T(0));
    return;
  }
  const int im = lapack_int(m), in = lapack_int(n), ik = lapack_int(k);
  const int ilda = lapack_int(lda), ildb = lapack_int(ldb), ildc = lapack_int(ldc);
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, double>) {
    dgemm_(&ta, &tb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &zero, c, &ildc);
  } else {
    sgemm_(&ta, &tb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &zero, c, &ildc);
  }
}

// B (m x n) <- B L^{-T}, L lower triangular n x n: with L L^T = B^T B this leaves B with
// orthonormal columns (a Cholesky QR step).
inline void solve_right_lower_transposed(int64_t m, int64_t n, const double* l, int64_t ldl,
                                         double* b, int64_t ldb) {
  if (m == 0 || n == 0) return;
  const int im = lapack_int(m), in = lapack_int(n), ildl = lapack_int(ldl);
  const int ildb = lapack_int(ldb);
  const char side = 'R', diag = 'N';
  const double one = 1;
  dtrsm_(&side, &kLower, &kT, &diag, &im, &in, &one, l, &ildl, b, &ildb);
}

// The symmetric eigendecomposition (syevd) of the n x n matrix in `a` (lower triangle read):
// ascending eigenvalues into `w`, eigenvectors over `a`. Reuses `work` and `iwork`.
inline void syevd(int64_t n, double* a, int64_t lda, double* w, std::vector<double>& work,
                  std::vector<int>& iwork) {
  const int nn = lapack_int(n), ilda = lapack_int(lda);
  int info = 0;
  double work_query = 0.0;
  int iwork_query = 0;
  at::native::lapackSyevd<double, double>('V', 'L', nn, a, ilda, w, &work_query, -1, nullptr, 0,
                                          &iwork_query, -1, &info);
  TORCH_CHECK(info == 0, "syevd workspace query failed with info ", info);
  work.resize(static_cast<size_t>(work_query));
  iwork.resize(static_cast<size_t>(iwork_query));
  at::native::lapackSyevd<double, double>('V', 'L', nn, a, ilda, w, work.data(),
                                          lapack_int(work.size()), nullptr, 0, iwork.data(),
                                          lapack_int(iwork.size()), &info);
  TORCH_CHECK(info == 0, "the symmetric eigensolver (syevd) did not converge, info ", info);
}

// In place: the lower Cholesky factor of the n x n positive definite matrix in `a`. Returns
// false (and leaves `a` partly overwritten) where it is not numerically positive definite.
inline bool cholesky_lower(int64_t n, double* a, int64_t lda) {
  int info = 0;
  at::native::lapackCholesky<double>('L', lapack_int(n), a, lapack_int(lda), &info);
  return info == 0;
}

// The m x m orthogonal factor Q of the QR decomposition of the m x n matrix `a` (m >= n),
// written to `q` (m x m, ld m): its first n columns span the columns of `a`, the others are an
// orthonormal basis of their complement. `a` is overwritten.
inline void full_q(int64_t m, int64_t n, double* a, int64_t lda, double* q,
                   std::vector<double>& tau, std::vector<double>& work) {
  const int im = lapack_int(m), in = lapack_int(n), ilda = lapack_int(lda);
  tau.resize(std::max<int64_t>(n, 1));
  int info = 0;
  double query = 0.0;
  at::native::lapackGeqrf<double>(im, in, a, ilda, tau.data(), &query, -1, &info);
  TORCH_CHECK(info == 0, "geqrf workspace query failed with info ", info);
  work.resize(std::max<size_t>(static_cast<size_t>(query), 1));
  at::native::lapackGeqrf<double>(im, in, a, ilda, tau.data(), work.data(),
                                  lapack_int(work.size()), &info);
  TORCH_CHECK(info == 0, "geqrf failed with info ", info);
  for (int64_t j = 0; j < n; ++j) std::copy_n(a + j * lda, m, q + j * m);
  at::native::lapackOrgqr<double>(im, im, in, q, im, tau.data(), &query, -1, &info);
  TORCH_CHECK(info == 0, "orgqr workspace query failed with info ", info);
  work.resize(std::max<size_t>(static_cast<size_t>(query), 1));
  at::native::lapackOrgqr<double>(im, im, in, q, im, tau.data(), work.data(),
                                  lapack_int(work.size()), &info);
  TORCH_CHECK(info == 0, "orgqr failed with info ", info);
}

}  // namespace trp::cpu::blas
