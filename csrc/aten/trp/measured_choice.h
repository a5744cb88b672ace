// Measured choice among interchangeable CUDA implementations, made once per problem and kept
// in memory. Launcher-side (c10 + the CUDA runtime API).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "trp/cuda_launch.h"

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

// The first call with a key times every candidate on `stream` and caches the fastest; later
// calls are a lookup. Timing: one warm-up run of each candidate (cuDNN plans, workspaces,
// allocator growth), then kRepeats rounds that run the candidates in turn, each run between two
// CUDA events, one synchronisation at the end; the fastest median wins. Event times include
// the gaps between a candidate's own launches, so launch-bound candidates pay for them.
// A candidate whose warm-up throws (unsupported here, out of memory) is skipped and named in a
// warning; if every candidate throws, the call fails with all their messages.
// Timing synchronises, which CUDA-graph capture forbids: while `stream` is capturing, the
// cached choice or else `capture_default` is returned, and nothing is cached.
// Candidates are identified by the caller's ids, and the cache keeps the id, so that the list
// (and whatever it costs to decide what is on it) is needed only when measuring.
template <std::size_t N>
class MeasuredChoice {
 public:
  static constexpr int kRepeats = 7;

  struct Candidate {
    int id;
    const char* name;
  };

  // candidates() lists the candidates (called only on a cache miss outside capture); run(id)
  // enqueues candidate `id` on `stream`. Returns the id of the chosen candidate.
  int choose(const ProblemKey<N>& key, const std::function<std::vector<Candidate>()>& candidates,
             int capture_default, cudaStream_t stream, const std::function<void(int)>& run) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    if (capturing(stream)) return capture_default;
    const int best = fastest(runnable(candidates(), run), stream, run);
    const std::lock_guard<std::mutex> lock(mutex_);
    return cache_.emplace(key, best).first->second;  // a concurrent first call may have won
  }

 private:
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

  static bool capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus status;
    TRP_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    return status != cudaStreamCaptureStatusNone;
  }

  // The candidates whose warm-up run succeeds. A failed candidate may leave a launch error
  // pending (cudaGetLastError clears it); an error that a second cudaGetLastError still reports
  // is sticky -- the context is lost, not the candidate unsupported -- and is raised.
  static std::vector<Candidate> runnable(const std::vector<Candidate>& candidates,
                                         const std::function<void(int)>& run) {
    std::vector<Candidate> ok;
    std::string failures;
    for (const Candidate& c : candidates) {
      try {
        run(c.id);
        ok.push_back(c);
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

  static int fastest(const std::vector<Candidate>& candidates, cudaStream_t stream,
                     const std::function<void(int)>& run) {
    const std::size_t count = candidates.size();
    if (count == 1) return candidates[0].id;
    const Events events(2 * static_cast<std::size_t>(kRepeats) * count);
    for (int rep = 0; rep < kRepeats; ++rep) {
      for (std::size_t c = 0; c < count; ++c) {
        const std::size_t at = 2 * (static_cast<std::size_t>(rep) * count + c);
        TRP_CUDA_CHECK(cudaEventRecord(events[at], stream));
        run(candidates[c].id);
        TRP_CUDA_CHECK(cudaEventRecord(events[at + 1], stream));
      }
    }
    TRP_CUDA_CHECK(cudaEventSynchronize(events[events.size() - 1]));
    int best = candidates[0].id;
    float best_ms = 0.f;
    for (std::size_t c = 0; c < count; ++c) {
      std::array<float, kRepeats> ms;
      for (int rep = 0; rep < kRepeats; ++rep) {
        const std::size_t at = 2 * (static_cast<std::size_t>(rep) * count + c);
        TRP_CUDA_CHECK(cudaEventElapsedTime(&ms[rep], events[at], events[at + 1]));
      }
      std::nth_element(ms.begin(), ms.begin() + kRepeats / 2, ms.end());
      const float median = ms[kRepeats / 2];
      if (c == 0 || median < best_ms) {
        best = candidates[c].id;
        best_ms = median;
      }
    }
    return best;
  }

  std::mutex mutex_;
  std::unordered_map<ProblemKey<N>, int, ProblemKeyHash<N>> cache_;
};

}  // namespace trp
