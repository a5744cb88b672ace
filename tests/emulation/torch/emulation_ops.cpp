// The emulation's controls as ops (torch.ops.trp_emulation.*), for tests/emulated_cuda.py.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda_emulation.h"

namespace {

cuda_emulation::Order order(const std::string& name) {
  if (name == "forward") return cuda_emulation::Order::kForward;
  if (name == "reverse") return cuda_emulation::Order::kReverse;
  TORCH_CHECK_VALUE(name == "random", "order must be forward, reverse or random, got '", name,
                    "'");
  return cuda_emulation::Order::kRandom;
}

void set_schedule(std::string threads, std::string blocks, int64_t seed) {
  cuda_emulation::set_schedule({order(threads), order(blocks), static_cast<uint64_t>(seed)});
}

void set_cooperative_launch(bool supported) { cuda_emulation::set_cooperative_launch(supported); }

void set_sm_count(int64_t count) {
  TORCH_CHECK_VALUE(count >= 1, "count must be at least 1, got ", count);
  cuda_emulation::set_sm_count(static_cast<int>(count));
}

// Every launch since clear_launches: the object holding the kernel, the kernel's offset in it,
// the launch site, the grid (blocks) and whether it was cooperative.
std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<std::string>,
           std::vector<int64_t>, std::vector<int64_t>>
launches() {
  std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<std::string>,
             std::vector<int64_t>, std::vector<int64_t>>
      out;
  for (const cuda_emulation::LaunchRecord& r : cuda_emulation::launches()) {
    std::get<0>(out).push_back(r.object);
    std::get<1>(out).push_back(static_cast<int64_t>(r.offset));
    std::get<2>(out).push_back(r.site);
    std::get<3>(out).push_back(r.grid);
    std::get<4>(out).push_back(r.cooperative);
  }
  return out;
}

void clear_launches() { cuda_emulation::clear_launches(); }

std::string fault_message() { return cuda_emulation::fault_message(); }

void reset_faults() { cuda_emulation::reset_faults(); }

}  // namespace

TORCH_LIBRARY(trp_emulation, m) {
  m.def("set_schedule(str threads, str blocks, int seed) -> ()", &set_schedule);
  m.def("set_cooperative_launch(bool supported) -> ()", &set_cooperative_launch);
  m.def("set_sm_count(int count) -> ()", &set_sm_count);
  m.def("launches() -> (str[] objects, int[] offsets, str[] sites, int[] grids, "
        "int[] cooperative)",
        &launches);
  m.def("clear_launches() -> ()", &clear_launches);
  m.def("fault_message() -> str", &fault_message);
  m.def("reset_faults() -> ()", &reset_faults);
}
