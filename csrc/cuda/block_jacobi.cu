// Blocked parallel Jacobi eigensolver for a batch of symmetric float64 matrices too large for one
// thread block's shared memory (k > 64). The order is padded to `dim`, a multiple of the pair
// tile T, and split into 2 * dim / T blocks of T / 2 indices. A sweep is the rounds of a
// round-robin tournament of the blocks; a round is two launches:
//   solve: one thread block per pair of blocks (I, J) loads the T x T subproblem
//          [[G_II, G_IJ], [G_JI, G_JJ]], runs one sweep of the shared-memory Jacobi on it
//          (trp/jacobi_eigen.cuh), writes it back and writes its rotation R (T x T);
//   apply: G_ac <- R_a^T G_ac R_c for every pair of pairs a < c (and its mirror), and
//          Q[:, pair c] <- Q[:, pair c] R_c, one thread block per T x T tile.
// One inner sweep per visit instead of a full inner diagonalisation costs about one more outer
// sweep and a quarter of the inner work (docs/cuda_svd.md). Because the solve writes the
// subproblem back exactly and the apply only touches off-diagonal tiles, the rounding of the
// tile products stays relative to each tile, and the relative stopping rule is still reached.
//
// Convergence without the host: the solve of a pair that needed a rotation increments
// sweep_rotations[b][sweep]; every kernel of sweep s > 0 first reads sweep_rotations[b][s - 1]
// and returns at once if it is zero, i.e. once a whole sweep found nothing to rotate. The host
// enqueues kBlockJacobiMaxSweeps sweeps regardless.
#include "trp/cuda_utils.cuh"
#include "trp/jacobi_eigen.cuh"
#include "trp/svd_cuda.h"

namespace trp::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned int kMaxGridY = 65535;

// A T x T tile in shared memory; the odd row stride spreads column accesses over the banks.
template <int kTile>
struct Tile {
  static constexpr int kLd = kTile + 1;
  static constexpr int64_t kElems = static_cast<int64_t>(kTile) * kLd;
};

// Global index of local index x (< T) of the pair of blocks (I, J).
template <int kTile>
__device__ __forceinline__ int64_t pair_index(int I, int J, int x) {
  constexpr int kHalf = kTile / 2;
  return x < kHalf ? static_cast<int64_t>(I) * kHalf + x
                   : static_cast<int64_t>(J) * kHalf + (x - kHalf);
}

__device__ __forceinline__ bool converged(const BlockJacobiArgs& args, int64_t b, int sweep) {
  return sweep > 0 && args.sweep_rotations[b * kBlockJacobiMaxSweeps + sweep - 1] == 0;
}

template <int kTile>
__global__ void __launch_bounds__(kThreads)
    block_jacobi_solve_kernel(const BlockJacobiArgs args, int sweep, int round) {
  extern __shared__ __align__(16) unsigned char smem[];
  using TileT = Tile<kTile>;
  JacobiShared<double> s;
  s.g = reinterpret_cast<double*>(smem);
  s.vt = s.g + TileT::kElems;
  s.ld = TileT::kLd;
  s.n = kTile;
  s.place_scratch(reinterpret_cast<unsigned char*>(s.vt + TileT::kElems));
  const int pairs = static_cast<int>(args.dim / kTile);
  const int a = blockIdx.x;
  int I, J;
  round_robin_pair(2 * pairs, round, a, I, J);
  for (int64_t b = blockIdx.y; b < args.batch; b += gridDim.y) {
    if (converged(args, b, sweep)) continue;
    double* g = args.g + b * args.dim * args.dim;
    __syncthreads();  // the previous matrix's shared arrays are no longer read
    for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
      const int x = u / kTile, y = u - x * kTile;
      if (x <= y) {
        s.g[x * s.ld + y] = g[pair_index<kTile>(I, J, x) * args.dim + pair_index<kTile>(I, J, y)];
      }
      s.vt[x * s.ld + y] = x == y ? 1.0 : 0.0;
    }
    const bool rotated = jacobi_diagonalize(s, 1);
    int32_t* rotating = args.rotating + b * pairs + a;
    if (!rotated) {
      if (threadIdx.x == 0) *rotating = 0;
      continue;
    }
    double* rotation = args.rotations + (b * pairs + a) * kTile * kTile;
    for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
      const int x = u / kTile, y = u - x * kTile;
      const double value = x <= y ? s.g[x * s.ld + y] : s.g[y * s.ld + x];
      g[pair_index<kTile>(I, J, x) * args.dim + pair_index<kTile>(I, J, y)] = value;
      rotation[u] = s.vt[y * s.ld + x];  // R[x][y]: column y is eigenvector y
    }
    if (threadIdx.x == 0) {
      *rotating = 1;
      atomicAdd(args.sweep_rotations + b * kBlockJacobiMaxSweeps + sweep, 1);
    }
  }
}

// out = op(A) B for T x T tiles in shared memory (op: transpose or not); out may alias A or B.
// Thread (ty, tx) of 16 x 16 owns rows ty + 16 r and columns tx + 16 c, so a warp reads B
// along a row (conflict-free) and A at two addresses (broadcast).
template <int kTile>
__device__ void tile_multiply(const double* A, bool transpose_a, const double* B, double* out) {
  constexpr int kLd = Tile<kTile>::kLd;
  constexpr int kPer = kTile / 16;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  double acc[kPer][kPer] = {};
  for (int k = 0; k < kTile; ++k) {
    double a[kPer], b[kPer];
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int row = ty + 16 * r;
      a[r] = transpose_a ? A[k * kLd + row] : A[row * kLd + k];
      b[r] = B[k * kLd + tx + 16 * r];
    }
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) acc[r][c] += a[r] * b[c];
    }
  }
  __syncthreads();  // every read of A and B is done before out (which may be one of them)
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
#pragma unroll
    for (int c = 0; c < kPer; ++c) out[(ty + 16 * r) * kLd + tx + 16 * c] = acc[r][c];
  }
  __syncthreads();
}

template <int kTile>
__device__ void load_rotation(const BlockJacobiArgs& args, int64_t b, int pair, double* tile) {
  const double* rotation = args.rotations + (b * (args.dim / kTile) + pair) * kTile * kTile;
  for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
    const int x = u / kTile, y = u - x * kTile;
    tile[x * Tile<kTile>::kLd + y] = rotation[u];
  }
}

// Blocks [0, pairs^2) are the G tiles (a, c), those with a < c at work; blocks
// [pairs^2, 2 pairs^2) are the Q tiles (row tile t, pair c).
template <int kTile>
__global__ void __launch_bounds__(kThreads)
    block_jacobi_apply_kernel(const BlockJacobiArgs args, int sweep, int round) {
  extern __shared__ __align__(16) unsigned char smem[];
  using TileT = Tile<kTile>;
  constexpr int kLd = TileT::kLd;
  double* work = reinterpret_cast<double*>(smem);
  double* left = work + TileT::kElems;
  double* right = left + TileT::kElems;
  const int pairs = static_cast<int>(args.dim / kTile);
  const int64_t dim = args.dim;
  const bool g_tile = blockIdx.x < static_cast<unsigned int>(pairs * pairs);
  const int u0 = g_tile ? blockIdx.x : blockIdx.x - pairs * pairs;
  const int a = u0 / pairs, c = u0 - a * pairs;  // G tile: (a, c); Q tile: (row tile a, c)
  if (g_tile && a >= c) return;
  int Ia = 0, Ja = 0, Ic, Jc;
  if (g_tile) round_robin_pair(2 * pairs, round, a, Ia, Ja);
  round_robin_pair(2 * pairs, round, c, Ic, Jc);
  for (int64_t b = blockIdx.y; b < args.batch; b += gridDim.y) {
    if (converged(args, b, sweep)) continue;
    const bool rotate_left = g_tile && args.rotating[b * pairs + a];
    const bool rotate_right = args.rotating[b * pairs + c];
    if (!rotate_left && !rotate_right) continue;
    __syncthreads();  // the previous matrix's tiles are no longer read
    double* base = (g_tile ? args.g : args.q) + b * dim * dim;
    auto row_of = [&](int x) {
      return g_tile ? pair_index<kTile>(Ia, Ja, x) : static_cast<int64_t>(a) * kTile + x;
    };
    for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
      const int x = u / kTile, y = u - x * kTile;
      work[x * kLd + y] = base[row_of(x) * dim + pair_index<kTile>(Ic, Jc, y)];
    }
    if (rotate_left) load_rotation<kTile>(args, b, a, left);
    if (rotate_right) load_rotation<kTile>(args, b, c, right);
    __syncthreads();
    if (rotate_left) tile_multiply<kTile>(left, true, work, work);
    if (rotate_right) tile_multiply<kTile>(work, false, right, work);
    for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
      const int x = u / kTile, y = u - x * kTile;
      base[row_of(x) * dim + pair_index<kTile>(Ic, Jc, y)] = work[x * kLd + y];
    }
    if (g_tile) {  // the mirror tile G_ca = G_ac^T, written along its rows
      for (int u = threadIdx.x; u < kTile * kTile; u += kThreads) {
        const int y = u / kTile, x = u - y * kTile;
        base[pair_index<kTile>(Ic, Jc, y) * dim + row_of(x)] = work[x * kLd + y];
      }
    }
  }
}

template <int kTile>
cudaError_t run_block_jacobi(const BlockJacobiArgs& args, cudaStream_t stream) {
  using TileT = Tile<kTile>;
  const int64_t solve_bytes =
      2 * TileT::kElems * sizeof(double) + JacobiShared<double>::scratch_bytes(kTile);
  const int64_t apply_bytes = 3 * TileT::kElems * sizeof(double);
  TRP_CUDA_TRY(cudaFuncSetAttribute(block_jacobi_solve_kernel<kTile>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(solve_bytes)));
  TRP_CUDA_TRY(cudaFuncSetAttribute(block_jacobi_apply_kernel<kTile>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(apply_bytes)));
  const unsigned int pairs = static_cast<unsigned int>(args.dim / kTile);
  const unsigned int grid_y =
      static_cast<unsigned int>(args.batch < kMaxGridY ? args.batch : kMaxGridY);
  const dim3 solve_grid(pairs, grid_y), apply_grid(2 * pairs * pairs, grid_y);
  for (int sweep = 0; sweep < kBlockJacobiMaxSweeps; ++sweep) {
    for (int round = 0; round < static_cast<int>(2 * pairs) - 1; ++round) {
      block_jacobi_solve_kernel<kTile>
          <<<solve_grid, kThreads, solve_bytes, stream>>>(args, sweep, round);
      TRP_CUDA_TRY(TRP_LAUNCH_STATUS());
      block_jacobi_apply_kernel<kTile>
          <<<apply_grid, kThreads, apply_bytes, stream>>>(args, sweep, round);
      TRP_CUDA_TRY(TRP_LAUNCH_STATUS());
    }
  }
  return cudaSuccess;
}

}  // namespace

int block_jacobi_tile(int64_t k) { return k <= 512 ? 32 : 64; }

int64_t block_jacobi_dim(int64_t k) {
  const int tile = block_jacobi_tile(k);
  return ceil_div(k, tile) * tile;
}

cudaError_t launch_block_jacobi(const BlockJacobiArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  return args.tile == 32 ? run_block_jacobi<32>(args, stream) : run_block_jacobi<64>(args, stream);
}

}  // namespace trp::cuda
