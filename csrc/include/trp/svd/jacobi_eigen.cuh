// Parallel cyclic Jacobi eigensolver for one small symmetric float64 matrix held in shared
// memory by one thread block. It is the eigensolver of the fused SVD kernel (the whole Gram
// matrix, k <= 64) and the subproblem solver of the blocked Jacobi (a pair of blocks).
//
// Why Jacobi: it is made of independent 2x2 rotations, so a block applies n/2 of them at once,
// and it computes every eigenvalue to high relative accuracy (Demmel & Veselic 1992) with the
// relative stopping rule below -- which the float64 path needs (csrc/cuda/svd_launch.cpp).
//
// Ordering: round r of a sweep rotates the n/2 disjoint pairs of round r of a round-robin
// tournament (the circle method), so every pair (p, q) is rotated once in any n - 1
// consecutive rounds. Each pair's rotation is computed by one thread ("phase A", Rutishauser's
// update: its own 2x2 diagonal block becomes exactly diagonal); then every other element of G
// and of the eigenvectors is rotated ("phase B"). The elements of G are grouped in the 2x2
// blocks (rows of pair a) x (columns of pair c), a < c, each read and written by one thread,
// so no element has two writers and G stays exactly symmetric; only the upper triangle is
// stored (element (x, y) lives at [min][max]).
//
// One barrier per round: the pair (p', q') of round r + 1 lies in exactly one block of round r
// (p' and q' are in different pairs of round r, as consecutive rounds share no pair), and
// diagonal elements change only in phase A. So the thread that finishes that block in phase B
// of round r computes phase A of round r + 1 for (p', q') at once, into the other half of
// double-buffered rotation arrays, and a single barrier separates the rounds.
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

// The inverse: the pair index of player x in round `round`, and its partner.
__device__ __forceinline__ int round_robin_slot(int players, int round, int x, int& partner) {
  const int circle = players - 1;
  if (x == circle) {
    partner = round;
    return 0;
  }
  const int d = (x - round + circle) % circle;
  if (d == 0) {
    partner = circle;
    return 0;
  }
  partner = (2 * round - x + 2 * circle) % circle;
  return d < circle - d ? d : circle - d;
}

__device__ __forceinline__ bool jacobi_rotation_needed(double app, double aqq, double apq) {
  return fabs(apq) > kJacobiTolerance * sqrt(fabs(app)) * sqrt(fabs(aqq));
}

// The rotations of one round.
struct JacobiRound {
  double* cosine;  // [n/2]
  double* sine;    // [n/2]
  int* first;      // [n/2] p of pair i
  int* second;     // [n/2] q of pair i
  int* rotating;   // [n/2] whether pair i rotates
};

// The shared-memory state of one eigenproblem of even order n <= 512 (pair indices are bytes).
// V: the element type of the eigenvectors (double; float where float32 outputs are all that
// is needed, which halves the largest share of the shared-memory traffic).
template <typename V>
struct JacobiShared {
  double* g;          // n x ld, upper triangle: the matrix, diagonal on exit
  V* vt;              // n x ld, row c = eigenvector c (orthonormal rows on entry, usually I)
  double* cosine;     // [2][n/2]: the rotations of a round, double-buffered by round parity
  double* sine;       // [2][n/2]
  int* first;         // [2][n/2] p of pair i
  int* second;        // [2][n/2] q of pair i
  int* rotating;      // [2][n/2] whether pair i rotates
  uchar2* cross;      // [n/2 * (n/2 - 1) / 2] the pairs of pairs (a, c), a < c, of phase B
  int ld;
  int n;

  // Bytes of the arrays after g and vt (which the caller places).
  __host__ __device__ static constexpr int64_t scratch_bytes(int n) {
    const int64_t pairs = n / 2;
    return 2 * pairs * (2 * sizeof(double) + 3 * sizeof(int)) +
           pairs * (pairs - 1) / 2 * sizeof(uchar2);
  }

  // Places the scratch arrays at `base` (8-byte aligned).
  __device__ void place_scratch(unsigned char* base) {
    const int pairs = n / 2;
    cosine = reinterpret_cast<double*>(base);
    sine = cosine + 2 * pairs;
    first = reinterpret_cast<int*>(sine + 2 * pairs);
    second = first + 2 * pairs;
    rotating = second + 2 * pairs;
    cross = reinterpret_cast<uchar2*>(rotating + 2 * pairs);
  }

  // The rotation arrays of buffer b (pointer arithmetic: no indexed array of pointers, which
  // would live in local memory).
  __device__ JacobiRound buffer(int b) const {
    const int offset = b * (n / 2);
    return JacobiRound{cosine + offset, sine + offset, first + offset, second + offset,
                       rotating + offset};
  }
};

namespace detail {

template <typename V>
__device__ __forceinline__ double& upper(const JacobiShared<V>& s, int x, int y) {
  return x < y ? s.g[x * s.ld + y] : s.g[y * s.ld + x];
}

// Whether any off-diagonal element needs a rotation (one thread per row).
template <typename V>
__device__ __forceinline__ int any_rotation_needed(const JacobiShared<V>& s) {
  int needed = 0;
  for (int x = threadIdx.x; x < s.n; x += blockDim.x) {
    const double axx = s.g[x * s.ld + x];
    for (int y = x + 1; y < s.n && !needed; ++y) {
      needed = jacobi_rotation_needed(axx, s.g[y * s.ld + y], s.g[x * s.ld + y]);
    }
  }
  return needed;
}

// Phase A of pair i of `round`, into `out`: returns whether it rotates.
template <typename V>
__device__ __forceinline__ int rotate_pair(const JacobiShared<V>& s, const JacobiRound& out,
                                           int round, int i) {
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
  out.cosine[i] = c;
  out.sine[i] = sn;
  out.first[i] = p;
  out.second[i] = q;
  out.rotating[i] = rotates;
  return rotates;
}

// Phase B of round `round` (rotations in `cur`) and, unless `last`, phase A of round + 1 (into
// `next`) for the pairs whose off-diagonal element lies in a block this thread finishes.
// Returns whether this thread's phase-A pairs rotate.
template <typename V>
__device__ __forceinline__ int apply_round(const JacobiShared<V>& s, const JacobiRound& cur,
                                           const JacobiRound& next, int round, bool last) {
  const int pairs = s.n / 2;
  const int blocks = pairs * (pairs - 1) / 2;
  const int items = blocks + pairs * s.n;
  const int next_round = round + 1 == s.n - 1 ? 0 : round + 1;
  int rotates = 0;
  for (int u = threadIdx.x; u < items; u += blockDim.x) {
    if (u < blocks) {
      const int a = s.cross[u].x, c = s.cross[u].y;
      const int pa = cur.first[a], qa = cur.second[a], pc = cur.first[c], qc = cur.second[c];
      if (cur.rotating[a] || cur.rotating[c]) {
        const double ca = cur.cosine[a], sa = cur.sine[a], cc = cur.cosine[c], sc = cur.sine[c];
        double& g11 = upper(s, pa, pc);
        double& g12 = upper(s, pa, qc);
        double& g21 = upper(s, qa, pc);
        double& g22 = upper(s, qa, qc);
        // rows of pair a, then columns of pair c
        const double h11 = ca * g11 - sa * g21, h21 = sa * g11 + ca * g21;
        const double h12 = ca * g12 - sa * g22, h22 = sa * g12 + ca * g22;
        g11 = cc * h11 - sc * h12;
        g12 = sc * h11 + cc * h12;
        g21 = cc * h21 - sc * h22;
        g22 = sc * h21 + cc * h22;
      }
      if (!last) {
        int partner;
        int slot = round_robin_slot(s.n, next_round, pa, partner);
        if (partner == pc || partner == qc) rotates |= rotate_pair(s, next, next_round, slot);
        slot = round_robin_slot(s.n, next_round, qa, partner);
        if (partner == pc || partner == qc) rotates |= rotate_pair(s, next, next_round, slot);
      }
    } else {
      const int v = u - blocks;
      const int c = v / s.n, i = v - c * s.n;  // consecutive threads: consecutive i
      if (!cur.rotating[c]) continue;
      V* x = s.vt + cur.first[c] * s.ld + i;
      V* y = s.vt + cur.second[c] * s.ld + i;
      const double x0 = *x, y0 = *y;
      *x = static_cast<V>(cur.cosine[c] * x0 - cur.sine[c] * y0);
      *y = static_cast<V>(cur.sine[c] * x0 + cur.cosine[c] * y0);
    }
  }
  return rotates;
}

}  // namespace detail

// Diagonalises s.g in place, accumulating the rotations into s.vt, for at most `max_sweeps`
// sweeps of n - 1 rounds; stops once n - 1 consecutive rounds found nothing to rotate (every
// pair was checked). Returns whether the matrix needed any rotation. All threads of the block
// must call it, right after writing s.g and s.vt (it starts with a barrier); it ends with one.
template <typename V>
__device__ bool jacobi_diagonalize(const JacobiShared<V>& s, int max_sweeps) {
  const int pairs = s.n / 2;
  for (int a = threadIdx.x; a < pairs; a += blockDim.x) {
    int u = a * (2 * pairs - a - 1) / 2;
    for (int c = a + 1; c < pairs; ++c) s.cross[u++] = make_uchar2(a, c);
  }
  __syncthreads();  // the caller's g and vt, and the cross table
  // A matrix that is diagonal to tolerance already (zero, or a converged subproblem of the
  // blocked solver) costs one scan.
  if (!__syncthreads_or(detail::any_rotation_needed(s))) return false;
  int rotates = 0;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    rotates |= detail::rotate_pair(s, s.buffer(0), 0, i);
  }
  int quiet = __syncthreads_or(rotates) ? 0 : 1;  // consecutive rounds without a rotation
  const int rounds = max_sweeps * (s.n - 1);
  for (int t = 0; t < rounds && quiet < s.n - 1; ++t) {
    const int round = t % (s.n - 1);
    // No phase A past the last round: its rotations would never reach the rest of G and vt.
    rotates = detail::apply_round(s, s.buffer(t & 1), s.buffer((t + 1) & 1), round,
                                  t + 1 == rounds);
    quiet = __syncthreads_or(rotates) ? 0 : quiet + 1;
  }
  return true;
}

}  // namespace trp::cuda
