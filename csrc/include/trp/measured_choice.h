// Measured choice among interchangeable CUDA implementations, made once per problem and kept
// in memory. Launcher-side (c10 + the CUDA runtime API).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
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
// Timing synchronises, which CUDA-graph capture forbids: while `stream` is capturing, the
// cached choice or else `capture_default` is returned, and nothing is cached.
template <std::size_t N>
class MeasuredChoice {
 public:
  static constexpr int kRepeats = 7;

  // run(i) enqueues candidate i on `stream`; returns the index of the chosen candidate.
  int choose(const ProblemKey<N>& key, int candidates, int capture_default, cudaStream_t stream,
             const std::function<void(int)>& run) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    if (capturing(stream)) return capture_default;
    const int best = fastest(candidates, stream, run);
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

  static int fastest(int candidates, cudaStream_t stream, const std::function<void(int)>& run) {
    for (int c = 0; c < candidates; ++c) run(c);
    const Events events(2 * static_cast<std::size_t>(kRepeats) * candidates);
    for (int rep = 0; rep < kRepeats; ++rep) {
      for (int c = 0; c < candidates; ++c) {
        const std::size_t at = 2 * (static_cast<std::size_t>(rep) * candidates + c);
        TRP_CUDA_CHECK(cudaEventRecord(events[at], stream));
        run(c);
        TRP_CUDA_CHECK(cudaEventRecord(events[at + 1], stream));
      }
    }
    TRP_CUDA_CHECK(cudaEventSynchronize(events[events.size() - 1]));
    int best = 0;
    float best_ms = 0.f;
    for (int c = 0; c < candidates; ++c) {
      std::array<float, kRepeats> ms;
      for (int rep = 0; rep < kRepeats; ++rep) {
        const std::size_t at = 2 * (static_cast<std::size_t>(rep) * candidates + c);
        TRP_CUDA_CHECK(cudaEventElapsedTime(&ms[rep], events[at], events[at + 1]));
      }
      std::nth_element(ms.begin(), ms.begin() + kRepeats / 2, ms.end());
      const float median = ms[kRepeats / 2];
      if (c == 0 || median < best_ms) {
        best = c;
        best_ms = median;
      }
    }
    return best;
  }

  std::mutex mutex_;
  std::unordered_map<ProblemKey<N>, int, ProblemKeyHash<N>> cache_;
};

}  // namespace trp
