// The CPU emulation of the CUDA execution model that runs the real kernel sources of csrc/ on
// machines without a GPU (docs/cuda_svd.md, "CPU emulation"). This header is its interface: the
// device-side primitives the CUDA shim (cuda_runtime.h, cooperative_groups.h) is written with,
// and the controls that tests use.
//
// Model: the threads of a block are cooperative fibers on the launching OS thread. A fiber runs
// until it waits -- at a block barrier (__syncthreads and its predicate forms), a warp
// collective (shuffles, votes, __syncwarp: a rendezvous of the lanes of the mask), or a grid
// barrier (grid.sync() of a cooperative launch) -- and the scheduler resumes the fibers whose
// wait is over, in the order the schedule sets. Ordinary launches run their blocks one after
// another; a cooperative launch keeps all its blocks alive, since grid.sync() must see them all.
// Every barrier checks that all its threads wait at the same call site, and a wait that can never
// end (a thread that exited or waits elsewhere) is a deadlock: both abort the launch with a
// message naming file:line. Dynamic shared memory is an exact-size buffer per block filled with
// 0xff bytes (NaN as float and double, -1 as an integer), between redzones that are checked
// whenever the block completes a barrier: a write into one (an index read from the fill) fails
// the launch too, naming the two barriers between which it happened, instead of corrupting the
// emulation's own state. Global memory is whatever the caller allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <string>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};

// The coordinates of the running thread, set by the scheduler before it resumes a fiber.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace cuda_emulation {

constexpr int kWarpSize = 32;

// ---- Controls --------------------------------------------------------------------------------

// The order in which the scheduler visits the threads of a block (on every pass) and the blocks
// of a grid. kRandom draws a new permutation from `seed` for every pass and every launch.
enum class Order { kForward, kReverse, kRandom };
struct Schedule {
  Order threads = Order::kForward;
  Order blocks = Order::kForward;
  uint64_t seed = 0;
};
void set_schedule(const Schedule& schedule);

// Whether the emulated device reports cooperative-launch support (cudaDevAttrCooperativeLaunch);
// off, launchers take their per-phase path.
void set_cooperative_launch(bool supported);
// The number of SMs the device reports (an H200's 132 unless set): fewer make a cooperative
// grid smaller than its work, so that its blocks loop over several work items.
void set_sm_count(int count);

// One record per kernel launch since the last clear_launches(): the kernel's address relative to
// the start of the shared object holding it (its symbol: `nm` of that object), and where it was
// launched.
struct LaunchRecord {
  std::string object;      // path of the shared object or executable holding the kernel
  uintptr_t offset;        // kernel address - load address of `object`
  std::string site;        // file:line of the launch
  unsigned grid, block;    // total blocks, threads per block
  std::size_t dynamic_shared;
  bool cooperative;
};
std::vector<LaunchRecord> launches();
void clear_launches();

// The message of the first launch that failed since the last reset_faults() (empty if none).
// A failed launch is sticky, as a kernel fault is on a device: every later cudaGetLastError
// returns cudaErrorLaunchFailure until reset_faults().
std::string fault_message();
void reset_faults();

// ---- Launching (the shim's TRP_LAUNCH and cudaLaunchCooperativeKernel) -----------------------

struct LaunchConfig {
  const void* kernel;
  dim3 grid, block;
  std::size_t dynamic_shared;
  bool cooperative;
  std::source_location site;
};
// Runs `body` (one thread's call of the kernel) for every thread of the grid; returns a
// cudaError_t value (0: success), and records it for cudaGetLastError.
int run_grid(const LaunchConfig& config, const std::function<void()>& body);

// ---- Device side: what kernel code calls while it runs on a fiber ----------------------------

enum class BarrierKind { kSync, kOr, kAnd, kCount };
// __syncthreads / __syncthreads_or / _and / _count: the barrier's result for `predicate`.
int block_barrier(BarrierKind kind, int predicate, std::source_location site);
// grid.sync() of a cooperative launch.
void grid_barrier(std::source_location site);

// The lanes of `mask` meet: each gives `bytes` (<= kMaxExchangeBytes) at `value`; returns the 32
// lanes' contributions, lane i's at offset i * kMaxExchangeBytes, valid until this lane's next
// collective. `what` names the collective (its kind must match across the lanes).
constexpr std::size_t kMaxExchangeBytes = 32;
const unsigned char* warp_exchange(unsigned mask, const char* what, const void* value,
                                   std::size_t bytes, std::source_location site);

// This block's dynamic shared memory and its size in bytes.
unsigned char* dynamic_shared();
std::size_t dynamic_shared_bytes();

// The linear index of the running thread in its block, and of its block in the grid.
unsigned linear_thread();
unsigned linear_block();

// Aborts the running launch with `message` (from kernel code: never returns to it).
[[noreturn]] void fault(const std::string& message);

// Called once per block, in the block's context, after its last thread exited; a check that
// finds something left undone calls fault(). For emulated hardware state kept per thread
// (the shim's cp.async queues).
void add_block_exit_check(void (*check)());

std::string describe(std::source_location site);  // "file:line"

}  // namespace cuda_emulation
