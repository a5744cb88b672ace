// Blocked parallel Jacobi eigensolver for a batch of symmetric float64 matrices too large for one
// thread block's shared memory (k > 64). The order is padded to `dim`, a multiple of the pair
// tile T, and split into 2 * dim / T blocks of T / 2 indices. A sweep is the rounds of a
// round-robin tournament of the blocks; a round is two phases:
//   solve: one thread block per pair of blocks (I, J) loads the T x T subproblem
//          [[G_II, G_IJ], [G_JI, G_JJ]], runs one sweep of the shared-memory Jacobi on it
//          (trp/svd/jacobi_eigen.cuh), writes it back and writes its rotation R (T x T);
//   apply: G_ac <- R_a^T G_ac R_c for every pair of pairs a < c (and its mirror), and
//          Q[:, pair c] <- Q[:, pair c] R_c, one thread block per T x T tile.
// One inner sweep per visit instead of a full inner diagonalisation costs about one more outer
// sweep and a quarter of the inner work (docs/cuda_svd.md). Because the solve writes the
// subproblem back exactly and the apply only touches off-diagonal tiles, the rounding of the
// tile products stays relative to each tile, and the relative stopping rule is still reached.
//
// Launches: the whole schedule is one cooperative launch of a persistent kernel (grid.sync()
// between phases), which stops after the first sweep without any rotation. While the stream is
// captured into a CUDA graph, or where cooperative launch is unavailable, each phase is its own
// launch (kBlockJacobiMaxSweeps x (2 * dim / T - 1) x 2 of them; a graph replays them cheaply).
//
// Convergence without the host: the solve of a pair that needed a rotation increments
// sweep_rotations[b][sweep] and any_rotations[sweep]; work of sweep s > 0 for matrix b first
// reads sweep_rotations[b][s - 1] and is skipped if it is zero, i.e. once a whole sweep found
// nothing to rotate in that matrix; the persistent kernel ends when any_rotations[s - 1] is zero.
#include <cooperative_groups.h>

#include "trp/cuda_utils.cuh"
#include "trp/dynamic_smem.h"
#include "trp/kernel_launch.h"
#include "trp/svd/jacobi_eigen.cuh"
#include "trp/svd/svd_cuda.h"

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

// Round `round` of sweep `sweep` for pair a of blocks of matrix b: loads the T x T subproblem,
// runs one sweep of the shared-memory Jacobi on it, writes it and its rotation back.
template <int kTile>
__device__ void solve_pair(const BlockJacobiArgs& args, int64_t b, int a, int sweep, int round,
                           unsigned char* smem) {
  if (converged(args, b, sweep)) return;
  using TileT = Tile<kTile>;
  JacobiShared<double> s;
  s.g = reinterpret_cast<double*>(smem);
  s.vt = s.g + TileT::kElems;
  s.ld = TileT::kLd;
  s.n = kTile;
  s.place_scratch(reinterpret_cast<unsigned char*>(s.vt + TileT::kElems));
  const int pairs = static_cast<int>(args.dim / kTile);
  int I, J;
  round_robin_pair(2 * pairs, round, a, I, J);
  double* g = args.g + b * args.dim * args.dim;
  __syncthreads();  // the previous work item's shared arrays are no longer read
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
    return;
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
    atomicAdd(args.any_rotations + sweep, 1);
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

// Tile `unit` of matrix b in round `round` of sweep `sweep`: units [0, pairs^2) are the G tiles
// (a, c), those with a < c at work; units [pairs^2, 2 pairs^2) are the Q tiles (row tile t,
// pair c).
template <int kTile>
__device__ void apply_tile(const BlockJacobiArgs& args, int64_t b, int unit, int sweep,
                           int round, unsigned char* smem) {
  using TileT = Tile<kTile>;
  constexpr int kLd = TileT::kLd;
  double* work = reinterpret_cast<double*>(smem);
  double* left = work + TileT::kElems;
  double* right = left + TileT::kElems;
  const int pairs = static_cast<int>(args.dim / kTile);
  const int64_t dim = args.dim;
  const bool g_tile = unit < pairs * pairs;
  const int u0 = g_tile ? unit : unit - pairs * pairs;
  const int a = u0 / pairs, c = u0 - a * pairs;  // G tile: (a, c); Q tile: (row tile a, c)
  if (g_tile && a >= c) return;
  if (converged(args, b, sweep)) return;
  const bool rotate_left = g_tile && args.rotating[b * pairs + a];
  const bool rotate_right = args.rotating[b * pairs + c];
  if (!rotate_left && !rotate_right) return;
  int Ia = 0, Ja = 0, Ic, Jc;
  if (g_tile) round_robin_pair(2 * pairs, round, a, Ia, Ja);
  round_robin_pair(2 * pairs, round, c, Ic, Jc);
  __syncthreads();  // the previous work item's tiles are no longer read
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

// The whole eigenproblem in one cooperative launch: the grid walks the sweep schedule, each
// phase a grid-stride loop over its work items (any grid size is correct), grid.sync() between
// phases in place of a kernel boundary, and the loop ends after the first sweep in which no
// pair of any matrix rotated (every block reads the same counter after the same sync). The
// register budget is that of one block per SM: capped for two, the T = 64 kernel spills.
template <int kTile>
__global__ void __launch_bounds__(kThreads, 1)
    block_jacobi_persistent_kernel(const BlockJacobiArgs args) {
  TRP_DYNAMIC_SHARED(smem);
  const cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int pairs = static_cast<int>(args.dim / kTile);
  const int64_t solve_items = pairs * args.batch;
  const int64_t apply_items = 2 * static_cast<int64_t>(pairs) * pairs * args.batch;
  for (int sweep = 0; sweep < kBlockJacobiMaxSweeps; ++sweep) {
    if (sweep > 0 && args.any_rotations[sweep - 1] == 0) break;
    for (int round = 0; round < 2 * pairs - 1; ++round) {
      for (int64_t item = blockIdx.x; item < solve_items; item += gridDim.x) {
        solve_pair<kTile>(args, item / pairs, static_cast<int>(item % pairs), sweep, round, smem);
      }
      grid.sync();
      const int64_t units = 2 * static_cast<int64_t>(pairs) * pairs;
      for (int64_t item = blockIdx.x; item < apply_items; item += gridDim.x) {
        apply_tile<kTile>(args, item / units, static_cast<int>(item % units), sweep, round, smem);
      }
      grid.sync();
    }
  }
}

// The same schedule as one launch per phase (two per round), for stream capture (a CUDA graph
// replays the launches without host cost) and devices without cooperative launch. Kernels of a
// sweep after one without rotations return at once.
enum class Phase { kSolve, kApply };

template <int kTile, Phase kPhase>
__global__ void __launch_bounds__(kThreads)
    block_jacobi_phase_kernel(const BlockJacobiArgs args, int sweep, int round) {
  TRP_DYNAMIC_SHARED(smem);
  for (int64_t b = blockIdx.y; b < args.batch; b += gridDim.y) {
    if constexpr (kPhase == Phase::kSolve) {
      solve_pair<kTile>(args, b, static_cast<int>(blockIdx.x), sweep, round, smem);
    } else {
      apply_tile<kTile>(args, b, static_cast<int>(blockIdx.x), sweep, round, smem);
    }
  }
}

// Whether `stream` is being captured into a CUDA graph.
cudaError_t stream_capturing(cudaStream_t stream, bool* capturing) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  TRP_CUDA_TRY(cudaStreamIsCapturing(stream, &status));
  *capturing = status != cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

// Blocks of the persistent kernel that are resident at once (0: no cooperative launch here).
template <int kTile>
cudaError_t cooperative_blocks(int64_t bytes, int* blocks) {
  *blocks = 0;
  int device = 0, supported = 0, sms = 0, per_sm = 0;
  TRP_CUDA_TRY(cudaGetDevice(&device));
  TRP_CUDA_TRY(cudaDeviceGetAttribute(&supported, cudaDevAttrCooperativeLaunch, device));
  if (!supported) return cudaSuccess;
  TRP_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  TRP_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, block_jacobi_persistent_kernel<kTile>, kThreads, static_cast<size_t>(bytes)));
  *blocks = sms * per_sm;
  return cudaSuccess;
}

template <int kTile>
cudaError_t run_block_jacobi(const BlockJacobiArgs& args, cudaStream_t stream) {
  using TileT = Tile<kTile>;
  const int64_t solve_bytes =
      2 * TileT::kElems * sizeof(double) + JacobiShared<double>::scratch_bytes(kTile);
  const int64_t apply_bytes = 3 * TileT::kElems * sizeof(double);
  const unsigned int pairs = static_cast<unsigned int>(args.dim / kTile);

  bool capturing = false;
  TRP_CUDA_TRY(stream_capturing(stream, &capturing));
  if (!capturing) {
    // The per-phase kernels too: a warm-up call outside capture (which takes the cooperative
    // path) then leaves nothing to set while a CUDA graph is being captured.
    TRP_CUDA_TRY(allow_dynamic_smem(block_jacobi_phase_kernel<kTile, Phase::kSolve>, solve_bytes));
    TRP_CUDA_TRY(allow_dynamic_smem(block_jacobi_phase_kernel<kTile, Phase::kApply>, apply_bytes));
    const int64_t bytes = solve_bytes > apply_bytes ? solve_bytes : apply_bytes;
    TRP_CUDA_TRY(allow_dynamic_smem(block_jacobi_persistent_kernel<kTile>, bytes));
    int resident = 0;
    TRP_CUDA_TRY(cooperative_blocks<kTile>(bytes, &resident));
    if (resident > 0) {
      // More blocks than the largest phase has work items would only wait at the syncs.
      const int64_t most_items = 2 * static_cast<int64_t>(pairs) * pairs * args.batch;
      const unsigned int blocks =
          static_cast<unsigned int>(most_items < resident ? most_items : resident);
      BlockJacobiArgs copy = args;
      void* params[] = {&copy};
      return cudaLaunchCooperativeKernel(block_jacobi_persistent_kernel<kTile>, dim3(blocks),
                                         dim3(kThreads), params, static_cast<size_t>(bytes),
                                         stream);
    }
  }

  const auto solve = block_jacobi_phase_kernel<kTile, Phase::kSolve>;
  const auto apply = block_jacobi_phase_kernel<kTile, Phase::kApply>;
  TRP_CUDA_TRY(allow_dynamic_smem(solve, solve_bytes));
  TRP_CUDA_TRY(allow_dynamic_smem(apply, apply_bytes));
  const unsigned int grid_y =
      static_cast<unsigned int>(args.batch < kMaxGridY ? args.batch : kMaxGridY);
  const dim3 solve_grid(pairs, grid_y), apply_grid(2 * pairs * pairs, grid_y);
  for (int sweep = 0; sweep < kBlockJacobiMaxSweeps; ++sweep) {
    for (int round = 0; round < static_cast<int>(2 * pairs) - 1; ++round) {
      TRP_LAUNCH(solve, solve_grid, kThreads, solve_bytes, stream)(args, sweep, round);
      TRP_CUDA_TRY(TRP_LAUNCH_STATUS());
      TRP_LAUNCH(apply, apply_grid, kThreads, apply_bytes, stream)(args, sweep, round);
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
