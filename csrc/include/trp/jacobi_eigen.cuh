// Parallel cyclic Jacobi eigensolver for one small symmetric float64 matrix held in shared
// memory by one thread block. It is the eigensolver of the fused SVD kernel (the whole Gram
// matrix, k <= 64) and the subproblem solver of the blocked Jacobi (a pair of blocks).
//
// Why Jacobi: it is made of independent 2x2 rotations, so a block applies n/2 of them at once,
// and it computes every eigenvalue to high relative accuracy (Demmel & Veselic 1992) with the
// relative stopping rule below -- which the float64 path needs (csrc/cuda/svd_launch.cpp).
//
// Ordering: round r of a sweep rotates the n/2 disjoint pairs of round r of a round-robin
// tournament (the circle method), so every pair (p, q) is rotated once per sweep of n - 1
// rounds. A round is two phases separated by barriers:
//   A. thread i < n/2 computes the rotation that zeroes g[p][q] of pair i and writes the
//      pair's own 2x2 diagonal block (Rutishauser's update: exact zero off the diagonal);
//   B. every other element of G and of the eigenvectors is rotated; the elements of G are
//      grouped in the 2x2 blocks (rows of pair a) x (columns of pair c), a < c, each read and
//      written by one thread, so no element has two writers and G stays exactly symmetric.
// Only the upper triangle of G is stored and used (element (x, y) lives at [min][max]).
#pragma once

#include <cfloat>
#include <cstdint>

#include "trp/cuda_utils.cuh"

namespace trp::cuda {

// Rotate (p, q) while |g_pq| > tol * sqrt(|g_pp| |g_qq|). A few ulps: the rotations' own
// rounding leaves off-diagonal residues of about eps relative to that scale, which must not
// keep the iteration alive, and 8 eps was found to converge as fast as any looser value.
constexpr double kJacobiTolerance = 8.0 * DBL_EPSILON;

// Players p < q of pair i in round `round` of a round-robin tournament of `players` (even):
// player players-1 sits still, the others turn around a circle of players-1 seats.
__device__ __forceinline__ void round_robin_pair(int players, int round, int i, int& p, int& q) {
  const int circle = players - 1;
  int a, b;
  if (i == 0) {
    a = round;
    b = circle;
  } else {
    a = (round + i) % circle;
    b = (round + circle - i) % circle;
  }
  p = a < b ? a : b;
  q = a < b ? b : a;
}

__device__ __forceinline__ bool jacobi_rotation_needed(double app, double aqq, double apq) {
  return fabs(apq) > kJacobiTolerance * sqrt(fabs(app)) * sqrt(fabs(aqq));
}

// The shared-memory state of one eigenproblem of even order n <= 512 (pair indices are bytes).
struct JacobiShared {
  double* g;        // n x ld, upper triangle: the matrix, diagonal on exit
  double* vt;       // n x ld, row c = eigenvector c (orthonormal rows on entry, usually I)
  double* cosine;   // [n/2] rotation of pair i in the current round
  double* sine;     // [n/2]
  int* first;       // [n/2] p of pair i
  int* second;      // [n/2] q of pair i
  int* rotating;    // [n/2] whether pair i rotates in this round
  uchar2* cross;    // [n/2 * (n/2 - 1) / 2] the pairs of pairs (a, c), a < c, of phase B
  int ld;
  int n;

  // Bytes of the arrays after g and vt (which the caller places).
  __host__ __device__ static constexpr int64_t scratch_bytes(int n) {
    const int64_t pairs = n / 2;
    return pairs * (2 * sizeof(double) + 3 * sizeof(int)) +
           pairs * (pairs - 1) / 2 * sizeof(uchar2);
  }

  // Places the scratch arrays at `base` (8-byte aligned).
  __device__ void place_scratch(unsigned char* base) {
    const int pairs = n / 2;
    cosine = reinterpret_cast<double*>(base);
    sine = cosine + pairs;
    first = reinterpret_cast<int*>(sine + pairs);
    second = first + pairs;
    rotating = second + pairs;
    cross = reinterpret_cast<uchar2*>(rotating + pairs);
  }
};

namespace detail {

__device__ __forceinline__ double& upper(const JacobiShared& s, int x, int y) {
  return x < y ? s.g[x * s.ld + y] : s.g[y * s.ld + x];
}

// Whether any off-diagonal element still needs a rotation (one thread per row).
__device__ __forceinline__ int any_rotation_needed(const JacobiShared& s) {
  int needed = 0;
  for (int x = threadIdx.x; x < s.n; x += blockDim.x) {
    const double axx = s.g[x * s.ld + x];
    for (int y = x + 1; y < s.n && !needed; ++y) {
      needed = jacobi_rotation_needed(axx, s.g[y * s.ld + y], s.g[x * s.ld + y]);
    }
  }
  return needed;
}

// Phase A for pair i: returns whether it rotates.
__device__ __forceinline__ int rotate_pair(const JacobiShared& s, int round, int i) {
  int p, q;
  round_robin_pair(s.n, round, i, p, q);
  double* pp = s.g + p * s.ld + p;
  double* qq = s.g + q * s.ld + q;
  double* pq = s.g + p * s.ld + q;
  const double app = *pp, aqq = *qq, apq = *pq;
  const int rotates = jacobi_rotation_needed(app, aqq, apq);
  double c = 1.0, sn = 0.0;
  if (rotates) {
    // t = tan of the angle, the smaller root of t^2 + 2 theta t - 1 = 0; hypot avoids the
    // overflow of theta^2, and |t| <= 1 keeps the rotation close to the identity.
    const double theta = (aqq - app) / (2.0 * apq);
    const double t = copysign(1.0, theta) / (fabs(theta) + hypot(theta, 1.0));
    c = rsqrt(1.0 + t * t);
    sn = t * c;
    *pp = app - t * apq;
    *qq = aqq + t * apq;
    *pq = 0.0;
  }
  s.cosine[i] = c;
  s.sine[i] = sn;
  s.first[i] = p;
  s.second[i] = q;
  s.rotating[i] = rotates;
  return rotates;
}

// Phase B: G <- J^T G J off the pairs' diagonal blocks, and vt <- J^T vt (the eigenvector
// matrix V <- V J), for the rotations of the current round.
__device__ __forceinline__ void apply_round(const JacobiShared& s) {
  const int pairs = s.n / 2;
  const int blocks = pairs * (pairs - 1) / 2;
  const int items = blocks + pairs * s.n;
  for (int u = threadIdx.x; u < items; u += blockDim.x) {
    if (u < blocks) {
      const int a = s.cross[u].x, c = s.cross[u].y;
      if (!s.rotating[a] && !s.rotating[c]) continue;
      const double ca = s.cosine[a], sa = s.sine[a], cc = s.cosine[c], sc = s.sine[c];
      double& g11 = upper(s, s.first[a], s.first[c]);
      double& g12 = upper(s, s.first[a], s.second[c]);
      double& g21 = upper(s, s.second[a], s.first[c]);
      double& g22 = upper(s, s.second[a], s.second[c]);
      // rows of pair a, then columns of pair c
      const double h11 = ca * g11 - sa * g21, h21 = sa * g11 + ca * g21;
      const double h12 = ca * g12 - sa * g22, h22 = sa * g12 + ca * g22;
      g11 = cc * h11 - sc * h12;
      g12 = sc * h11 + cc * h12;
      g21 = cc * h21 - sc * h22;
      g22 = sc * h21 + cc * h22;
    } else {
      const int v = u - blocks;
      const int c = v / s.n, i = v - c * s.n;  // consecutive threads: consecutive i
      if (!s.rotating[c]) continue;
      double* x = s.vt + s.first[c] * s.ld + i;
      double* y = s.vt + s.second[c] * s.ld + i;
      const double x0 = *x, y0 = *y;
      *x = s.cosine[c] * x0 - s.sine[c] * y0;
      *y = s.sine[c] * x0 + s.cosine[c] * y0;
    }
  }
}

}  // namespace detail

// Diagonalises s.g in place, accumulating the rotations into s.vt, for at most `max_sweeps`
// sweeps; stops early once no pair needs a rotation. Returns whether any rotation was done.
// All threads of the block must call it, right after writing s.g and s.vt (it starts with a
// barrier); it ends with one.
__device__ inline bool jacobi_diagonalize(const JacobiShared& s, int max_sweeps) {
  const int pairs = s.n / 2;
  for (int a = threadIdx.x; a < pairs; a += blockDim.x) {
    int u = a * (2 * pairs - a - 1) / 2;
    for (int c = a + 1; c < pairs; ++c) s.cross[u++] = make_uchar2(a, c);
  }
  __syncthreads();  // the caller's writes of g and vt, and the cross table
  bool rotated = false;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    if (!__syncthreads_or(detail::any_rotation_needed(s))) break;
    rotated = true;
    for (int round = 0; round < s.n - 1; ++round) {
      int rotates = 0;
      for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
        rotates |= detail::rotate_pair(s, round, i);
      }
      if (!__syncthreads_or(rotates)) continue;
      detail::apply_round(s);
      __syncthreads();
    }
  }
  __syncthreads();
  return rotated;
}

}  // namespace trp::cuda
