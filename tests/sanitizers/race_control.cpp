// A deliberate data race, built and run by test_thread_sanitizer.py exactly as the CPU ops are:
// if ThreadSanitizer does not report this one, a clean report on the ops proves nothing.
#include <torch/library.h>

#include <thread>
#include <vector>

namespace {

int64_t racy_count(int64_t n) {
  int64_t count = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      for (int64_t i = 0; i < n; ++i) ++count;  // unsynchronised read-modify-write
    });
  }
  for (std::thread& thread : threads) thread.join();
  return count;
}

}  // namespace

TORCH_LIBRARY(trp_race_control, m) { m.def("racy_count(int n) -> int", &racy_count); }
