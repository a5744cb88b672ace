// Checks of the CUDA emulation itself (include/cuda_emulation.h), one small kernel each: what it
// must compute, and the faults it must report with their file:line. Run by
// tests/test_emulation_runtime.py.
//
// Usage: runtime_checks NAME [forward|reverse|random]. Prints "ok" last and exits 0 when the
// check holds; a check of a fault prints the fault's message before that.
#include <cuda_runtime.h>
#include <cooperative_groups.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "trp/kernel_launch.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

void expect_status(cudaError_t got, cudaError_t want, const std::string& what) {
  expect(got == want, what + ": got " + cudaGetErrorString(got) + ", want " +
                          cudaGetErrorString(want));
}

// ---- Kernels that must compute the right thing -----------------------------------------------

__global__ void neighbours_kernel(int* out) {
  TRP_DYNAMIC_SHARED(smem);
  int* s = reinterpret_cast<int*>(smem);
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = t * t;
  __syncthreads();
  const int any = __syncthreads_or(t == 5);
  const int all = __syncthreads_and(t >= 0);
  const int none = __syncthreads_and(t != 7);
  const int count = __syncthreads_count(t % 3 == 0);
  out[blockIdx.x * n + t] = s[(t + 1) % n] + 1000 * (any + 2 * all + 4 * none) + 100000 * count;
}

void check_barriers() {
  const int blocks = 3, threads = 96;
  std::vector<int> out(blocks * threads, -1);
  TRP_LAUNCH(neighbours_kernel, blocks, threads, threads * sizeof(int), nullptr)(out.data());
  expect_status(cudaGetLastError(), cudaSuccess, "launch");
  for (int i = 0; i < blocks * threads; ++i) {
    const int t = i % threads, next = (t + 1) % threads;
    expect(out[i] == next * next + 1000 * 3 + 100000 * 32, "barrier results of thread " +
                                                              std::to_string(i));
  }
}

__global__ void warp_kernel(int* out) {
  const int lane = threadIdx.x % 32, base = 8 * threadIdx.x;
  out[base + 0] = __shfl_xor_sync(0xffffffffu, lane * 10, 3);
  out[base + 1] = __shfl_sync(0xffffffffu, lane * 10, 7);
  out[base + 2] = __shfl_down_sync(0xffffffffu, lane * 10, 4);
  out[base + 3] = __shfl_up_sync(0xffffffffu, lane * 10, 4);
  out[base + 4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 2));
  out[base + 5] = __any_sync(0xffffffffu, lane == 31);
  out[base + 6] = __all_sync(0xffffffffu, lane < 31);
  __syncwarp();
  out[base + 7] = static_cast<int>(__shfl_xor_sync(0xffffffffu, 1.5 * lane, 16, 32) * 2);
}

void check_warp_collectives() {
  std::vector<int> out(64 * 8, -1);
  TRP_LAUNCH(warp_kernel, 1, 64, 0, nullptr)(out.data());
  expect_status(cudaGetLastError(), cudaSuccess, "launch");
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, *o = &out[8 * t];
    expect(o[0] == (lane ^ 3) * 10, "shfl_xor");
    expect(o[1] == 70, "shfl");
    expect(o[2] == (lane + 4 < 32 ? lane + 4 : lane) * 10, "shfl_down");
    expect(o[3] == (lane >= 4 ? lane - 4 : lane) * 10, "shfl_up");
    expect(static_cast<unsigned>(o[4]) == 0xaaaaaaaau, "ballot");
    expect(o[5] == 1 && o[6] == 0, "any / all");
    expect(o[7] == 3 * (lane ^ 16), "shfl_xor of a double");
  }
}

__global__ void atomics_kernel(int* sum, unsigned long long* largest, int* bits) {
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(sum, id);
  atomicMax(largest, 1000ull * id);
  atomicOr(bits, 1 << (id % 31));
}

void check_atomics() {
  int sum = 0, bits = 0;
  unsigned long long largest = 0;
  TRP_LAUNCH(atomics_kernel, 4, 64, 0, nullptr)(&sum, &largest, &bits);
  expect(sum == 255 * 256 / 2 && largest == 255000 && bits == 0x7fffffff, "atomics");
}

__global__ void grid_kernel(int* values, int* seen) {
  const auto grid = cooperative_groups::this_grid();
  if (threadIdx.x == 0) values[blockIdx.x] = blockIdx.x + 1;
  grid.sync();
  if (threadIdx.x == 0) seen[blockIdx.x] = values[(blockIdx.x + 1) % gridDim.x];
}

void check_grid_sync() {
  const int blocks = 6;
  std::vector<int> values(blocks, 0), seen(blocks, -1);
  void* args[] = {nullptr, nullptr};
  int* v = values.data();
  int* s = seen.data();
  args[0] = &v;
  args[1] = &s;
  expect_status(cudaLaunchCooperativeKernel(grid_kernel, dim3(blocks), dim3(64), args),
                cudaSuccess, "cooperative launch");
  for (int b = 0; b < blocks; ++b) expect(seen[b] == (b + 1) % blocks + 1, "grid.sync");
}

__global__ void shared_kernel(unsigned* first, int* static_ok) {
  TRP_DYNAMIC_SHARED(smem);
  __shared__ int block_id;
  if (threadIdx.x == 0) {
    *first = *reinterpret_cast<unsigned*>(smem);
    block_id = blockIdx.x;
  }
  __syncthreads();
  if (block_id != static_cast<int>(blockIdx.x)) *static_ok = 0;
  if (threadIdx.x == 0) {
    const std::size_t bytes = cuda_emulation::dynamic_shared_bytes();
    if (bytes != 40) *static_ok = 0;
  }
}

void check_shared_memory() {
  unsigned first = 0;
  int static_ok = 1;
  TRP_LAUNCH(shared_kernel, 5, 32, 40, nullptr)(&first, &static_ok);
  expect(first == 0xffffffffu, "dynamic shared memory starts as 0xff bytes");
  expect(static_ok == 1, "static __shared__ is per block, dynamic has the launch's size");
}

__global__ void empty_kernel() {}

void check_launch_errors() {
  TRP_LAUNCH(empty_kernel, 1, 1025, 0, nullptr)();
  expect_status(cudaGetLastError(), cudaErrorInvalidConfiguration, "1025 threads");
  expect_status(cudaGetLastError(), cudaSuccess, "the error is cleared once read");
  TRP_LAUNCH(empty_kernel, 1, 32, 64 * 1024, nullptr)();
  expect_status(cudaGetLastError(), cudaErrorInvalidValue, "64 KB without the opt-in");
  expect_status(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     227 * 1024),
                cudaSuccess, "opt-in");
  TRP_LAUNCH(empty_kernel, 1, 32, 64 * 1024, nullptr)();
  expect_status(cudaGetLastError(), cudaSuccess, "64 KB with the opt-in");
  int per_sm = 0, sms = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, empty_kernel, 256, 100 * 1024);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  expect(per_sm == 2 && sms == 132, "occupancy of 256 threads with 100 KB, and the SM count");
  void* args[] = {nullptr};
  expect_status(cudaLaunchCooperativeKernel(empty_kernel, dim3(2 * 132 + 1), dim3(256), args,
                                            100 * 1024),
                cudaErrorCooperativeLaunchTooLarge, "more blocks than are resident");
}

// The sum of `v` over the lanes of the warp, by shuffles.
__device__ int trp_sum_of_lanes(int v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The same kernel without a barrier between the write and the read of a neighbour's value: the
// result depends on the order in which threads run, which is what the orders are for.
__global__ void racy_kernel(int* out) {
  TRP_DYNAMIC_SHARED(smem);
  int* s = reinterpret_cast<int*>(smem);
  s[threadIdx.x] = 1;
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x] == 1;
}

// Warp 1 reads what warp 0 wrote after a warp collective, with no block barrier between: warps
// are independent, so whether it sees the write depends on which warp runs first.
__global__ void racy_warps_kernel(int* out) {
  TRP_DYNAMIC_SHARED(smem);
  int* flag = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) *flag = 0;
  __syncthreads();
  const int sum = trp_sum_of_lanes(1);
  if (threadIdx.x == 0) *flag = sum;
  if (threadIdx.x == 32) *out = *flag;
}

void check_orders_reveal_a_race() {
  std::map<std::string, int> wrong, seen;
  for (const auto& [name, order] : {std::pair{"forward", cuda_emulation::Order::kForward},
                                    std::pair{"reverse", cuda_emulation::Order::kReverse}}) {
    cuda_emulation::set_schedule({order, order, 0});
    std::vector<int> out(64, -1);
    TRP_LAUNCH(racy_kernel, 1, 64, 64 * sizeof(int), nullptr)(out.data());
    for (const int o : out) wrong[name] += o != 1;
    TRP_LAUNCH(racy_warps_kernel, 1, 64, sizeof(int), nullptr)(&seen[name]);
  }
  // forward: each thread reads its successor before that one ran; reverse: after.
  expect(wrong["forward"] == 63 && wrong["reverse"] == 1, "orders give the racy kernel away");
  // One order runs warp 0 to its end before warp 1 gets past the barrier, the other the reverse.
  expect(std::min(seen["forward"], seen["reverse"]) == 0 &&
             std::max(seen["forward"], seen["reverse"]) == 32,
         "warps run ahead of each other");
}

// ---- Kernels the emulation must reject, naming where --------------------------------------

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 32) {
    __syncthreads();  // fault site: divergent_barrier
  } else {
    __syncthreads();  // fault site: divergent_barrier
  }
}

__global__ void barrier_in_branch_kernel() {
  if (threadIdx.x == 0) __syncthreads();  // fault site: barrier_in_branch
}

__global__ void early_exit_kernel() {
  if (threadIdx.x == 3) return;
  __syncthreads();  // fault site: early_exit
}

__global__ void mask_mismatch_kernel(int* out) {
  const unsigned mask = threadIdx.x == 0 ? 0x0000ffffu : 0xffffffffu;
  out[threadIdx.x] = __shfl_xor_sync(mask, 1, 1);  // fault site: mask_mismatch
}

__global__ void uncooperative_grid_sync_kernel() {
  cooperative_groups::this_grid().sync();  // fault site: uncooperative_grid_sync
}

__global__ void trap_kernel() {
  if (threadIdx.x == 1) __trap();  // fault site: trap
}

// A loop whose exit each thread decides on its own (the Jacobi rounds without their vote): one
// thread leaves it early and waits at the next barrier while the others wait in the loop.
__global__ void loop_exit_kernel(int* out) {
  int quiet = 0;
  for (int t = 0; t < 8 && quiet < (threadIdx.x == 5 ? 1 : 3); ++t) {
    quiet += __syncthreads_or(0) ? 0 : 1;  // fault site: loop_exit
  }
  out[threadIdx.x] = __syncthreads_count(quiet);  // fault site: loop_exit
}

// The rounds of the Jacobi kernels with the vote that orders them deleted: each thread
// publishes a row index in shared memory and reads its neighbour's with no barrier between, so
// some thread reads the 0xff fill (-1) and writes a row before the start of shared memory. The
// emulation must report it at the next barrier, not let it corrupt its own state.
__global__ void unordered_rounds_kernel(int rounds) {
  TRP_DYNAMIC_SHARED(smem);
  double* g = reinterpret_cast<double*>(smem);  // 32 rows of 33
  int* row = reinterpret_cast<int*>(g + 32 * 33);
  const int x = threadIdx.x;
  int quiet = 0;
  for (int t = 0; t < rounds && quiet < 3; ++t) {
    row[x] = (x + t) % 32;
    const int r = row[(x + 1) % 32];
    g[r * 33 + x] = 1.0;
    quiet = __syncthreads_or(r < 0) ? 0 : quiet + 1;  // fault site: unordered_rounds
  }
}

// Writes one byte past its dynamic shared memory: the AddressSanitizer build must report it.
__global__ void shared_overflow_kernel() {
  TRP_DYNAMIC_SHARED(smem);
  if (threadIdx.x == 0) smem[cuda_emulation::dynamic_shared_bytes()] = 1;
}

void run_faulting(const std::function<void()>& launch) {
  launch();
  const cudaError_t status = cudaGetLastError();
  expect_status(status, cudaErrorLaunchFailure, "the faulting launch");
  expect_status(cudaGetLastError(), cudaErrorLaunchFailure, "a fault is sticky");
  TRP_LAUNCH(empty_kernel, 1, 32, 0, nullptr)();
  expect_status(cudaGetLastError(), cudaErrorLaunchFailure, "launches after a fault fail");
  std::printf("%s\n", cuda_emulation::fault_message().c_str());
  cuda_emulation::reset_faults();
  expect_status(cudaGetLastError(), cudaSuccess, "reset_faults clears the fault");
}

const std::map<std::string, std::function<void()>> kChecks = {
    {"barriers", check_barriers},
    {"warp_collectives", check_warp_collectives},
    {"atomics", check_atomics},
    {"grid_sync", check_grid_sync},
    {"shared_memory", check_shared_memory},
    {"launch_errors", check_launch_errors},
    {"orders_reveal_a_race", check_orders_reveal_a_race},
    {"divergent_barrier",
     [] { run_faulting([] { TRP_LAUNCH(divergent_barrier_kernel, 2, 64, 0, nullptr)(); }); }},
    {"barrier_in_branch",
     [] { run_faulting([] { TRP_LAUNCH(barrier_in_branch_kernel, 1, 64, 0, nullptr)(); }); }},
    {"early_exit",
     [] { run_faulting([] { TRP_LAUNCH(early_exit_kernel, 1, 64, 0, nullptr)(); }); }},
    {"mask_mismatch",
     [] {
       std::vector<int> out(32);
       run_faulting([&] { TRP_LAUNCH(mask_mismatch_kernel, 1, 32, 0, nullptr)(out.data()); });
     }},
    {"uncooperative_grid_sync",
     [] { run_faulting([] { TRP_LAUNCH(uncooperative_grid_sync_kernel, 1, 32, 0, nullptr)(); }); }},
    {"trap", [] { run_faulting([] { TRP_LAUNCH(trap_kernel, 1, 32, 0, nullptr)(); }); }},
    {"loop_exit",
     [] {
       std::vector<int> out(64);
       run_faulting([&] { TRP_LAUNCH(loop_exit_kernel, 1, 64, 0, nullptr)(out.data()); });
     }},
    {"unordered_rounds",
     [] {
       run_faulting([] {
         TRP_LAUNCH(unordered_rounds_kernel, 1, 32, 32 * 33 * sizeof(double) + 32 * sizeof(int),
                    nullptr)(8);
       });
     }},
    {"shared_overflow", [] { TRP_LAUNCH(shared_overflow_kernel, 1, 32, 24, nullptr)(); }},
};

}  // namespace

int main(int argc, char** argv) {
  const auto check = argc > 1 ? kChecks.find(argv[1]) : kChecks.end();
  if (check == kChecks.end()) {
    std::fprintf(stderr, "usage: %s CHECK [forward|reverse|random]; checks:", argv[0]);
    for (const auto& [name, run] : kChecks) std::fprintf(stderr, " %s", name.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  const std::string order = argc > 2 ? argv[2] : "forward";
  const auto how = order == "reverse"  ? cuda_emulation::Order::kReverse
                   : order == "random" ? cuda_emulation::Order::kRandom
                                       : cuda_emulation::Order::kForward;
  cuda_emulation::set_schedule({how, how, 7});
  check->second();
  std::printf("%s\n", failures == 0 ? "ok" : "failed");
  return failures == 0 ? 0 : 1;
}
