// Measured choice among interchangeable CUDA implementations, made once per problem: kept in
// memory, and in the store of conv_choice_store.h (a file, when one is set) for later processes.
// Launcher-side (c10 + the CUDA runtime API).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "trp/conv_choice_store.h"
#include "trp/cuda_launch.h"
#include "trp/device_hold.h"
#include "trp/fastest_candidate.h"

namespace trp {

// A problem as a tuple of integers: shapes, dtype, layout and whatever else changes the timing.
template <std::size_t N>
using ProblemKey = std::array<int64_t, N>;

template <std::size_t N>
struct ProblemKeyHash {
  std::size_t operator()(const ProblemKey<N>& key) const noexcept {
    uint64_t h = 1469598103934665603ull;  // FNV-1a, one 64-bit value at a time
    for (const int64_t v : key) {
      h ^= static_cast<uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
  }
};

// The first call with a key looks for a stored choice (conv_choice_store.h), else measures the
// candidates on `stream` and stores the one chosen; later calls are a lookup in memory.
//
// Measuring: one warm-up run of each candidate (cuDNN plans, workspaces, allocator growth; a
// candidate whose warm-up throws -- unsupported here, out of memory -- is skipped and named in a
// warning; if every candidate throws, the call fails with all their messages), then kRounds
// rounds in which the candidates run in turn, each round starting one candidate later. Each
// round starts with a hold (trp/device_hold.h): a kernel that keeps the device busy while the
// host queues the round, so that the events between the runs time the device alone -- the
// gaps between a candidate's own launches included only where the device really waits -- and
// not the host's time to issue them. The hold is sized at 1.5x the host's issue time of the
// previous round (of the warm-ups for the first), between kMinHoldMs and kMaxHoldMs; a round
// whose issue outlasted its hold is counted as short. One synchronisation at the end. The rule
// of trp/fastest_candidate.h picks: the lowest median device time, ties within 3% to the
// candidate with fewer launches.
//
// Timing synchronises, which CUDA-graph capture forbids: while `stream` is capturing, a stored
// choice or else `capture_default` is returned, and nothing is measured or kept.
template <std::size_t N>
class MeasuredChoice {
 public:
  static constexpr int kRounds = 15;
  static constexpr double kMinHoldMs = 0.05, kMaxHoldMs = 50.0;

  struct Candidate {
    int id;
    const char* name;
    int launches;  // the kernels it launches (trp/fastest_candidate.h's tie rule)
  };

  // What a choice needs from its caller, each called only when needed: the candidates (only
  // when measuring), a run of candidate `id` on the stream, the problem as the store keys it
  // (on a miss in memory), and the id of an implementation name read from the store (-1: not
  // one of this caller's).
  struct Calls {
    std::function<std::vector<Candidate>()> candidates;
    std::function<void(int)> run;
    std::function<std::string()> stored_key;
    std::function<int(const std::string&)> id_of;
  };

  int choose(const ProblemKey<N>& key, int capture_default, cudaStream_t stream,
             const Calls& calls) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const int64_t generation = conv_choice_generation();
      if (generation != generation_) {  // the store was cleared: so is this copy of it
        cache_.clear();
        generation_ = generation;
      }
      const auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    const std::string stored_key = calls.stored_key();
    if (const std::optional<std::string> stored = stored_conv_choice(stored_key)) {
      const int id = calls.id_of(*stored);
      if (id >= 0) return remember(key, id);
    }
    if (capturing(stream)) return capture_default;
    const Measured best = measure(runnable(calls.candidates(), calls.run), stream, calls.run);
    store_conv_choice(stored_key, best.name, best.details);
    return remember(key, best.id);
  }

 private:
  using Clock = std::chrono::steady_clock;

  static double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  }

  class Events {
   public:
    explicit Events(std::size_t count) {
      events_.reserve(count);
      for (std::size_t i = 0; i < count; ++i) {
        cudaEvent_t event;
        TRP_CUDA_CHECK(cudaEventCreate(&event));
        events_.push_back(event);
      }
    }
    ~Events() {
      for (const cudaEvent_t event : events_) {
        const cudaError_t status = cudaEventDestroy(event);
        if (status != cudaSuccess) TORCH_WARN("cudaEventDestroy: ", cudaGetErrorString(status));
      }
    }
    Events(const Events&) = delete;
    Events& operator=(const Events&) = delete;
    cudaEvent_t operator[](std::size_t i) const { return events_[i]; }
    std::size_t size() const { return events_.size(); }

   private:
    std::vector<cudaEvent_t> events_;
  };

  struct Runnable {
    Candidate candidate;
    double warmup_host_ms;  // the host's time for the warm-up run, first-time costs included
  };

  struct Measured {
    int id;
    std::string name, details;
  };

  int remember(const ProblemKey<N>& key, int id) {
    const std::lock_guard<std::mutex> lock(mutex_);
    return cache_.emplace(key, id).first->second;  // a concurrent first call may have won
  }

  static bool capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus status;
    TRP_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    return status != cudaStreamCaptureStatusNone;
  }

  // The candidates whose warm-up run succeeds. A failed candidate may leave a launch error
  // pending (cudaGetLastError clears it); an error that a second cudaGetLastError still reports
  // is sticky -- the context is lost, not the candidate unsupported -- and is raised.
  static std::vector<Runnable> runnable(const std::vector<Candidate>& candidates,
                                        const std::function<void(int)>& run) {
    std::vector<Runnable> ok;
    std::string failures;
    for (const Candidate& c : candidates) {
      const Clock::time_point start = Clock::now();
      try {
        run(c.id);
        ok.push_back({c, ms_since(start)});
      } catch (const std::exception& e) {
        (void)cudaGetLastError();
        const cudaError_t sticky = cudaGetLastError();
        TORCH_CHECK(sticky == cudaSuccess, "CUDA error while measuring candidate '", c.name,
                    "': ", cudaGetErrorString(sticky), " (after: ", e.what(), ")");
        const std::string message = std::string(c.name) + ": " + e.what();
        TORCH_WARN("skipping implementation ", message);
        failures += "\n  " + message;
      }
    }
    TORCH_CHECK(!ok.empty(), "every implementation failed for this problem:", failures);
    return ok;
  }

  static double hold_cycles_per_ms() {
    int device = 0, khz = 0;
    TRP_CUDA_CHECK(cudaGetDevice(&device));
    TRP_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device));
    return static_cast<double>(khz);  // kHz: cycles per ms at the peak clock (a hold at a
                                      // lower clock lasts longer, never shorter)
  }

  static double clamp_hold(double ms) { return std::clamp(ms, kMinHoldMs, kMaxHoldMs); }

  static Measured measure(const std::vector<Runnable>& candidates, cudaStream_t stream,
                          const std::function<void(int)>& run) {
    const std::size_t count = candidates.size();
    if (count == 1) {
      const Candidate& only = candidates[0].candidate;
      return {only.id, only.name, "rounds=0 (the one candidate that runs here)"};
    }
    const double cycles_per_ms = hold_cycles_per_ms();
    double hold_ms = 0.0;
    for (const Runnable& r : candidates) hold_ms += r.warmup_host_ms;
    hold_ms = clamp_hold(1.5 * hold_ms);
    // Per round: the event before the hold, then one before each run and one after the last.
    const std::size_t per_round = count + 2;
    const Events events(per_round * kRounds + 1);
    // The warm-ups done before the first hold, so that it starts on an idle device.
    TRP_CUDA_CHECK(cudaEventRecord(events[events.size() - 1], stream));
    TRP_CUDA_CHECK(cudaEventSynchronize(events[events.size() - 1]));
    std::vector<std::vector<double>> host(count, std::vector<double>(kRounds));
    // The event before candidate c's run in each round; the one after it follows.
    std::vector<std::vector<std::size_t>> before(count, std::vector<std::size_t>(kRounds));
    std::vector<double> issue_ms(kRounds);
    for (int round = 0; round < kRounds; ++round) {
      const std::size_t base = per_round * static_cast<std::size_t>(round);
      const Clock::time_point issued = Clock::now();
      TRP_CUDA_CHECK(cudaEventRecord(events[base], stream));
      TRP_CUDA_CHECK(cuda::launch_device_hold(static_cast<long long>(hold_ms * cycles_per_ms),
                                              stream));
      TRP_CUDA_CHECK(cudaEventRecord(events[base + 1], stream));
      const std::vector<std::size_t> order = round_order(static_cast<std::size_t>(round), count);
      for (std::size_t position = 0; position < count; ++position) {
        const std::size_t c = order[position];
        before[c][round] = base + 1 + position;
        const Clock::time_point start = Clock::now();
        run(candidates[c].candidate.id);
        host[c][round] = ms_since(start);
        TRP_CUDA_CHECK(cudaEventRecord(events[base + 2 + position], stream));
      }
      issue_ms[round] = ms_since(issued);
      hold_ms = clamp_hold(1.5 * issue_ms[round]);
    }
    TRP_CUDA_CHECK(cudaEventSynchronize(events[per_round * kRounds - 1]));
    const auto elapsed = [&](std::size_t from, std::size_t to) {
      float ms = 0.f;
      TRP_CUDA_CHECK(cudaEventElapsedTime(&ms, events[from], events[to]));
      return static_cast<double>(ms);
    };
    std::vector<CandidateTiming> timings(count);
    std::vector<double> host_ms(count);
    for (std::size_t c = 0; c < count; ++c) {
      std::vector<double> device(kRounds);
      for (int round = 0; round < kRounds; ++round) {
        device[round] = elapsed(before[c][round], before[c][round] + 1);
      }
      timings[c] = {median(device), candidates[c].candidate.launches};
      host_ms[c] = median(host[c]);
    }
    int short_holds = 0;
    for (int round = 0; round < kRounds; ++round) {
      const std::size_t base = per_round * static_cast<std::size_t>(round);
      if (issue_ms[round] >= elapsed(base, base + 1)) ++short_holds;
    }
    const std::size_t chosen = choose_candidate(timings);
    std::string details = "rounds=" + std::to_string(kRounds) +
                          " short_holds=" + std::to_string(short_holds);
    for (std::size_t c = 0; c < count; ++c) {
      char line[160];
      std::snprintf(line, sizeof(line), "; %s device_ms=%.6g host_ms=%.6g launches=%d",
                    candidates[c].candidate.name, timings[c].device_ms, host_ms[c],
                    timings[c].launches);
      details += line;
    }
    const Candidate& best = candidates[chosen].candidate;
    return {best.id, best.name, details};
  }

  std::mutex mutex_;
  int64_t generation_ = 0;
  std::unordered_map<ProblemKey<N>, int, ProblemKeyHash<N>> cache_;
};

}  // namespace trp
