// Blocks, barriers and the fiber scheduler of the emulation (the model: cuda_emulation.h).
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include <sys/mman.h>

#include "cuda_runtime.h"
#include "device_model.h"
#include "fiber.h"
#include "launch_state.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace cuda_emulation {
namespace {

enum class Wait { kNone, kBlock, kWarp, kGrid, kExited };

struct Block;

struct Thread {
  Fiber* fiber;
  Block* block;
  unsigned index;  // linear in the block
  Wait wait = Wait::kNone;
  unsigned long generation = 0;  // of the barrier waited on
  std::source_location site;     // where it waits
  const char* what = "";
};

struct BlockBarrier {
  unsigned arrived = 0;
  BarrierKind kind = BarrierKind::kSync;
  std::source_location site;
  unsigned first = 0;
  int any = 0, all = 1, count = 0;
  unsigned long generation = 0;
  int result[2] = {0, 0};
};

struct Warp {
  unsigned arrived = 0;  // lanes, as bits
  unsigned mask = 0;
  const char* what = "";
  std::source_location site;
  unsigned first = 0;
  unsigned long generation = 0;
  alignas(16) unsigned char data[2][kWarpSize][kMaxExchangeBytes];
};

struct Block {
  unsigned linear = 0;
  uint3 index{};
  unsigned char* shared = nullptr;  // exactly dynamic_shared bytes, between two redzones
#if defined(__SANITIZE_ADDRESS__)
  std::unique_ptr<unsigned char[]> heap_shared;  // what `shared` points to
#endif
  const char* checked = nullptr;    // the barrier after which its redzones were last intact
  std::source_location checked_site;  // (none yet: since the block started)
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned> warp_order, lane_order;  // the order in which they run
  BlockBarrier barrier;
  bool reorder = false;  // a new random visit order is due
  unsigned live = 0;
  unsigned at_grid = 0;               // threads waiting for this generation of the grid barrier
  unsigned long grid_generation = 0;  // to pass (others, if any, wait for an older one)
};

struct GridBarrier {
  unsigned arrived = 0;
  std::source_location site;
  unsigned long generation = 0;
};

// Fibers kept between launches; a large cooperative launch gives the rest back.
constexpr std::size_t kKeptFibers = 4096;

// Dynamic shared memory. A kernel that indexes it with a value read before it was written (the
// 0xff fill: -1) writes before its start; in memory of the emulation's own, such a write would
// corrupt the scheduler's state and crash it instead of failing the launch. So each block's
// buffer lies between two redzones of kRedzone bytes (filled with kRedzoneByte, checked at every
// barrier the block completes, at its end and when the launch fails: a write into one fails the
// launch, naming the barriers between which it happened), in an arena of its own mapping whose
// ends are inaccessible pages (kRedzone is a multiple of the page size). Under AddressSanitizer the buffers are plain heap allocations,
// whose redzones it checks on every access.
constexpr std::size_t kRedzone = 4096;
constexpr unsigned char kRedzoneByte = 0xa5;

#if !defined(__SANITIZE_ADDRESS__)
struct SharedArena {
  unsigned char* base = nullptr;  // the first usable byte, after a guard page
  std::size_t bytes = 0;          // usable bytes

  // Room for `blocks` buffers of `shared` bytes each: the address of the first one's start;
  // the others follow at stride(shared).
  static std::size_t stride(std::size_t shared) {
    return kRedzone + (shared + kRedzone - 1) / kRedzone * kRedzone;
  }
  unsigned char* reserve(std::size_t blocks, std::size_t shared) {
    const std::size_t needed = blocks * stride(shared) + kRedzone;
    if (needed > bytes) {
      if (base != nullptr) munmap(base - kRedzone, bytes + 2 * kRedzone);
      void* m = mmap(nullptr, needed + 2 * kRedzone, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      base = static_cast<unsigned char*>(m) + kRedzone;
      bytes = needed;
      mprotect(m, kRedzone, PROT_NONE);
      mprotect(base + bytes, kRedzone, PROT_NONE);
    }
    return base + kRedzone;
  }
};
SharedArena shared_arena;
#endif

Schedule schedule_now;
std::mt19937_64 random_order;
std::vector<std::unique_ptr<Fiber>> fiber_pool;
std::vector<void (*)()> block_exit_checks;

// The running launch.
const LaunchConfig* config = nullptr;
const std::function<void()>* body = nullptr;
std::size_t threads_per_block = 0;
unsigned long total_threads = 0;
GridBarrier grid_barrier_state;
Thread* current = nullptr;
std::string launch_fault;  // set by fault(): the launch is abandoned

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

const char* barrier_name(BarrierKind kind) {
  switch (kind) {
    case BarrierKind::kOr: return "__syncthreads_or";
    case BarrierKind::kAnd: return "__syncthreads_and";
    case BarrierKind::kCount: return "__syncthreads_count";
    case BarrierKind::kSync: break;
  }
  return "__syncthreads";
}

std::string block_name(const Block& b) {
  std::ostringstream s;
  s << "block (" << b.index.x << ", " << b.index.y << ", " << b.index.z << ")";
  return s.str();
}

void arrange(std::vector<unsigned>& order, Order how) {
  std::iota(order.begin(), order.end(), 0u);
  if (how == Order::kReverse) std::reverse(order.begin(), order.end());
  if (how == Order::kRandom) std::shuffle(order.begin(), order.end(), random_order);
}

// "" if the redzones around the dynamic shared memory of `b` are intact; else what was written
// where, since the last barrier the block completed, up to `until`: a barrier's name (at `site`)
// or, with no site, another point ("the end of the block").
std::string shared_damage(const Block& b, const char* until, const std::source_location& site) {
#if defined(__SANITIZE_ADDRESS__)
  return "";
#else
  static const std::vector<unsigned char> intact(kRedzone, kRedzoneByte);
  const unsigned char* before = b.shared - kRedzone;
  const unsigned char* after = b.shared + config->dynamic_shared;
  if (std::memcmp(before, intact.data(), kRedzone) == 0 &&
      std::memcmp(after, intact.data(), kRedzone) == 0) {
    return "";
  }
  // The first and last changed byte, relative to the start of the buffer.
  std::ptrdiff_t first = 0, last = 0;
  bool found = false;
  for (const unsigned char* zone : {before, after}) {
    for (std::size_t i = 0; i < kRedzone; ++i) {
      if (zone[i] == kRedzoneByte) continue;
      last = zone + i - b.shared;
      if (!found) first = last;
      found = true;
    }
  }
  std::ostringstream s;
  s << block_name(b) << ": a thread wrote outside its " << config->dynamic_shared
    << " bytes of dynamic shared memory (changed: bytes " << first << " to " << last
    << " from its start) after ";
  if (b.checked != nullptr) {
    s << b.checked << " (" << describe(b.checked_site) << ")";
  } else {
    s << "the start of the block";
  }
  s << ", by " << until;
  if (site.line() != 0) s << " (" << describe(site) << ")";
  return s.str();
#endif
}

// The running thread's block has completed the barrier `name` at `site` (or its end): its
// redzones are checked, and the launch fails if they were written.
void check_shared(Block& b, const char* name, const std::source_location& site);

// Suspends the running thread until `generation` of what it waits on has passed.
void wait_for(Wait what, unsigned long generation, const std::source_location& site,
              const char* name) {
  current->wait = what;
  current->generation = generation;
  current->site = site;
  current->what = name;
  yield();
  current->wait = Wait::kNone;
}

[[noreturn]] void thread_main() {
  (*body)();
  Block& b = *current->block;
  current->wait = Wait::kExited;
  if (--b.live == 0) {
    check_shared(b, "the end of the block", {});
    for (void (*check)() : block_exit_checks) check();
  }
  finish();
}

bool runnable(const Thread& t) {
  switch (t.wait) {
    case Wait::kNone: return true;
    case Wait::kBlock: return t.block->barrier.generation != t.generation;
    case Wait::kWarp: return t.block->warps[t.index / kWarpSize]->generation != t.generation;
    case Wait::kGrid: return grid_barrier_state.generation != t.generation;
    case Wait::kExited: break;
  }
  return false;
}

// Where the threads of the blocks that are still live wait, for a deadlock report: the blocks
// that wait alike together, the first of them named.
std::string waits(const std::vector<std::unique_ptr<Block>>& blocks) {
  std::map<std::string, std::pair<const Block*, unsigned>> alike;  // waits -> first block, count
  for (const auto& b : blocks) {
    if (b->live == 0) continue;
    std::map<std::string, unsigned> sites;
    for (const Thread& t : b->threads) {
      ++sites[t.wait == Wait::kExited ? "exited"
                                      : "waiting at " + std::string(t.what) + " (" +
                                            describe(t.site) + ")"];
    }
    std::ostringstream s;
    s << " of " << b->threads.size() << " threads:";
    const char* separator = " ";
    for (const auto& [where, count] : sites) {
      s << separator << count << " " << where;
      separator = ", ";
    }
    auto& entry = alike.try_emplace(s.str(), b.get(), 0).first->second;
    ++entry.second;
  }
  std::ostringstream s;
  const char* separator = "";
  for (const auto& [summary, first] : alike) {
    s << separator << block_name(*first.first);
    if (first.second > 1) s << " and " << first.second - 1 << " more blocks alike";
    s << summary;
    separator = "; ";
  }
  return s.str();
}

// Runs the warps of `b` in its warp order, each until none of its lanes can go on -- they wait
// at a block or grid barrier, or have exited -- so that one warp may run far ahead of another
// between two block barriers, as warps do on the device (a race between warps that meet only at
// warp collectives of their own shows). Returns whether any thread ran.
bool run_warps(Block& b) {
  bool progress = false;
  blockIdx = b.index;
  for (const unsigned w : b.warp_order) {
    for (bool again = true; again;) {
      again = false;
      for (const unsigned lane : b.lane_order) {
        const unsigned t = w * kWarpSize + lane;
        if (t >= threads_per_block || !runnable(b.threads[t])) continue;
        threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        current = &b.threads[t];
        current->fiber->resume();
        current = nullptr;
        if (!launch_fault.empty()) return progress;
        again = progress = true;
      }
    }
  }
  return progress;
}

// Runs `blocks` (linear indices) together until every thread has exited; false on a fault.
bool run_wave(const std::vector<unsigned>& linear_blocks) {
  const std::size_t needed = linear_blocks.size() * threads_per_block;
  while (fiber_pool.size() < needed) fiber_pool.push_back(std::make_unique<Fiber>());
  std::vector<std::unique_ptr<Block>> blocks;
  std::size_t next_fiber = 0;
#if !defined(__SANITIZE_ADDRESS__)
  unsigned char* const arena = shared_arena.reserve(linear_blocks.size(), config->dynamic_shared);
#endif
  for (const unsigned linear : linear_blocks) {
    auto b = std::make_unique<Block>();
    b->linear = linear;
    b->index = {linear % gridDim.x, linear / gridDim.x % gridDim.y,
                linear / (gridDim.x * gridDim.y)};
#if defined(__SANITIZE_ADDRESS__)
    if (config->dynamic_shared > 0) {
      b->heap_shared.reset(new unsigned char[config->dynamic_shared]);
      b->shared = b->heap_shared.get();
      std::memset(b->shared, 0xff, config->dynamic_shared);
    }
#else
    b->shared = arena + blocks.size() * SharedArena::stride(config->dynamic_shared);
    std::memset(b->shared - kRedzone, kRedzoneByte, kRedzone);
    std::memset(b->shared, 0xff, config->dynamic_shared);
    std::memset(b->shared + config->dynamic_shared, kRedzoneByte, kRedzone);
#endif
    b->threads.resize(threads_per_block);
    for (unsigned t = 0; t < threads_per_block; ++t) {
      b->threads[t] = Thread{fiber_pool[next_fiber++].get(), b.get(), t};
      b->threads[t].fiber->start(&thread_main);
    }
    for (std::size_t w = 0; w < (threads_per_block + kWarpSize - 1) / kWarpSize; ++w) {
      b->warps.push_back(std::make_unique<Warp>());
    }
    b->warp_order.resize(b->warps.size());
    b->lane_order.resize(std::min<std::size_t>(kWarpSize, threads_per_block));
    arrange(b->warp_order, schedule_now.threads);
    arrange(b->lane_order, schedule_now.threads);
    b->live = static_cast<unsigned>(threads_per_block);
    blocks.push_back(std::move(b));
  }
  for (;;) {
    bool progress = false;
    for (const auto& b : blocks) {
      if (b->live == 0) continue;
      if (b->at_grid == b->live && b->grid_generation == grid_barrier_state.generation) continue;
      if (b->reorder) {
        arrange(b->warp_order, Order::kRandom);
        arrange(b->lane_order, Order::kRandom);
        b->reorder = false;
      }
      progress |= run_warps(*b);
      if (!launch_fault.empty()) return false;
    }
    if (std::none_of(blocks.begin(), blocks.end(), [](const auto& b) { return b->live > 0; })) {
      return true;
    }
    if (!progress) {
      launch_fault = "deadlock: " + waits(blocks);
      for (const auto& b : blocks) {
        const std::string damage = shared_damage(*b, "the time the launch failed", {});
        if (!damage.empty()) {
          launch_fault = damage + "; then " + launch_fault;
          break;
        }
      }
      return false;
    }
  }
}

}  // namespace

void set_schedule(const Schedule& schedule) {
  schedule_now = schedule;
  random_order.seed(schedule.seed);
}

void add_block_exit_check(void (*check)()) { block_exit_checks.push_back(check); }

std::string describe(std::source_location site) {
  return std::string(site.file_name()) + ":" + std::to_string(site.line());
}

void fault(const std::string& message) {
  if (current == nullptr) throw std::logic_error("emulation fault outside a kernel: " + message);
  std::ostringstream s;
  // A write outside shared memory comes first: it may be what led the kernel astray.
  const std::string damage = shared_damage(*current->block, "the time the launch failed", {});
  if (!damage.empty()) s << damage << "; then ";
  s << message << " (" << block_name(*current->block) << ", thread " << current->index << ")";
  launch_fault = s.str();
  finish();
}

namespace {

void check_shared(Block& b, const char* name, const std::source_location& site) {
  std::string damage = shared_damage(b, name, site);
  if (!damage.empty()) {
    launch_fault = std::move(damage);
    finish();
  }
  b.checked = name;
  b.checked_site = site;
}

// The messages of the faults, kept out of line from the barriers' hot paths.
[[noreturn]] __attribute__((noinline)) void different_barriers(const BlockBarrier& bar,
                                                                BarrierKind kind,
                                                                std::source_location site) {
  fault(std::string("threads wait at different barriers: thread ") + std::to_string(bar.first) +
        " at " + barrier_name(bar.kind) + " (" + describe(bar.site) + "), this one at " +
        barrier_name(kind) + " (" + describe(site) + ")");
}

[[noreturn]] __attribute__((noinline)) void different_collectives(const Warp& w, unsigned mask,
                                                                   const char* what,
                                                                   std::source_location site) {
  std::ostringstream s;
  s << "lanes of a warp meet at different collectives: lane " << w.first << " at " << w.what
    << " (" << describe(w.site) << ", mask " << std::hex << w.mask << "), this one at " << what
    << " (" << describe(site) << ", mask " << mask << ")";
  fault(s.str());
}

}  // namespace

int block_barrier(BarrierKind kind, int predicate, std::source_location site) {
  BlockBarrier& bar = current->block->barrier;
  if (bar.arrived == 0) {
    bar.kind = kind;
    bar.site = site;
    bar.first = current->index;
    bar.any = 0;
    bar.all = 1;
    bar.count = 0;
  } else if (kind != bar.kind || !same_site(site, bar.site)) {
    different_barriers(bar, kind, site);
  }
  bar.any |= predicate != 0;
  bar.all &= predicate != 0;
  bar.count += predicate != 0;
  const unsigned long generation = bar.generation;
  if (++bar.arrived == threads_per_block) {
    check_shared(*current->block, barrier_name(kind), site);
    const int result[] = {1, bar.any, bar.all, bar.count};
    bar.result[generation & 1] = result[static_cast<int>(kind)];
    bar.arrived = 0;
    ++bar.generation;
    current->block->reorder = schedule_now.threads == Order::kRandom;
  }
  wait_for(Wait::kBlock, generation, site, barrier_name(kind));
  return bar.result[generation & 1];
}

void grid_barrier(std::source_location site) {
  if (!config->cooperative) {
    fault("grid.sync() (" + describe(site) + ") in a kernel not launched cooperatively");
  }
  GridBarrier& bar = grid_barrier_state;
  if (bar.arrived == 0) {
    bar.site = site;
  } else if (!same_site(site, bar.site)) {
    fault("threads wait at different grid barriers: " + describe(bar.site) + " and " +
          describe(site));
  }
  const unsigned long generation = bar.generation;
  Block& b = *current->block;
  if (++bar.arrived == total_threads) {
    bar.arrived = 0;
    ++bar.generation;
  }
  if (b.grid_generation != generation) {
    b.grid_generation = generation;
    b.at_grid = 0;
  }
  if (++b.at_grid == b.live) check_shared(b, "grid.sync()", site);
  wait_for(Wait::kGrid, generation, site, "grid.sync()");
  if (b.grid_generation == generation) --b.at_grid;
}

const unsigned char* warp_exchange(unsigned mask, const char* what, const void* value,
                                   std::size_t bytes, std::source_location site) {
  const unsigned lane = current->index % kWarpSize;
  const std::size_t warp_base = current->index - lane;
  if (!(mask >> lane & 1u)) fault(std::string(what) + " with a mask that leaves out the caller");
  if (warp_base + (32 - __builtin_clz(mask)) > threads_per_block) {
    fault(std::string(what) + " with a mask naming lanes the block does not have");
  }
  Warp& w = *current->block->warps[current->index / kWarpSize];
  if (w.arrived == 0) {
    w.mask = mask;
    w.what = what;
    w.site = site;
    w.first = lane;
  } else if (mask != w.mask || std::strcmp(what, w.what) != 0 || !same_site(site, w.site)) {
    different_collectives(w, mask, what, site);
  }
  const unsigned long generation = w.generation;
  if (bytes > 0) std::memcpy(w.data[generation & 1][lane], value, bytes);
  w.arrived |= 1u << lane;
  if (w.arrived == w.mask) {
    w.arrived = 0;
    ++w.generation;
  }
  wait_for(Wait::kWarp, generation, site, what);
  return &w.data[generation & 1][0][0];
}

unsigned char* dynamic_shared() { return current->block->shared; }
std::size_t dynamic_shared_bytes() { return config->dynamic_shared; }
unsigned linear_thread() { return current->index; }
unsigned linear_block() { return current->block->linear; }

int run_grid(const LaunchConfig& launch, const std::function<void()>& kernel_body) {
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  const int status = check_launch(launch);
  if (status != cudaSuccess) return status;
  record_launch(launch);
  config = &launch;
  body = &kernel_body;
  blockDim = launch.block;
  gridDim = launch.grid;
  threads_per_block = std::size_t(launch.block.x) * launch.block.y * launch.block.z;
  const unsigned blocks = launch.grid.x * launch.grid.y * launch.grid.z;
  total_threads = static_cast<unsigned long>(blocks) * threads_per_block;
  grid_barrier_state = GridBarrier{};
  launch_fault.clear();
  std::vector<unsigned> order(blocks);
  arrange(order, schedule_now.blocks);
  bool ok = true;
  if (launch.cooperative) {
    ok = run_wave(order);
  } else {
    for (std::size_t i = 0; i < order.size() && ok; ++i) ok = run_wave({order[i]});
  }
  config = nullptr;
  body = nullptr;
  if (fiber_pool.size() > kKeptFibers) fiber_pool.resize(kKeptFibers);
  if (!ok) return fail_launch(launch, launch_fault);
  return cudaSuccess;
}

}  // namespace cuda_emulation
