// The block-wide reductions of csrc/include/trp (block_sum in cuda_utils.cuh, block_max and
// block_argmax in block_reduce.cuh) on the CUDA emulation, held to what their comments promise:
// every thread gets the result, and a call may follow the previous one at once -- its scratch
// may still be being read -- which is what their first barrier is for. The kernels' own calls
// always have another barrier in between, so only these checks show that barrier's worth.
//
// Usage: reduction_checks [forward|reverse|random]. Prints "ok" and exits 0 when every thread
// of every call got the right result.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "trp/block_reduce.cuh"
#include "trp/cuda_utils.cuh"
#include "trp/kernel_launch.h"

namespace {

constexpr int kThreads = 256, kCalls = 4;

// Per thread and call: the sum, the maximum and the arg-maximum of values that change from one
// call to the next, all with the same scratch, one call right after the other.
__global__ void reductions_kernel(double* sums, double* maxima, int64_t* argmaxima) {
  __shared__ double scratch_v[kThreads / 32];
  __shared__ int64_t scratch_i[kThreads / 32];
  const int t = threadIdx.x;
  for (int call = 0; call < kCalls; ++call) {
    const double v = (t * 37 + call * 101) % kThreads;
    sums[call * kThreads + t] = trp::cuda::block_sum(v, scratch_v);
    maxima[call * kThreads + t] = trp::cuda::block_max(v + call, scratch_v);
    argmaxima[call * kThreads + t] = trp::cuda::block_argmax(v, t, scratch_v, scratch_i);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string order = argc > 1 ? argv[1] : "forward";
  const auto how = order == "reverse"  ? cuda_emulation::Order::kReverse
                   : order == "random" ? cuda_emulation::Order::kRandom
                                       : cuda_emulation::Order::kForward;
  cuda_emulation::set_schedule({how, how, 11});
  std::vector<double> sums(kCalls * kThreads), maxima(kCalls * kThreads);
  std::vector<int64_t> argmaxima(kCalls * kThreads);
  TRP_LAUNCH(reductions_kernel, 1, kThreads, 0, nullptr)(sums.data(), maxima.data(),
                                                         argmaxima.data());
  if (cudaGetLastError() != cudaSuccess) {
    std::printf("launch failed: %s\n", cuda_emulation::fault_message().c_str());
    return 1;
  }
  int wrong = 0;
  for (int call = 0; call < kCalls; ++call) {
    // (37 t + 101 call) mod 256 is a permutation of 0 .. 255 (37 is odd).
    const double sum = kThreads * (kThreads - 1) / 2.0, largest = kThreads - 1 + call;
    int64_t at = 0;
    while ((at * 37 + call * 101) % kThreads != kThreads - 1) ++at;
    for (int t = 0; t < kThreads; ++t) {
      const int i = call * kThreads + t;
      wrong += sums[i] != sum || maxima[i] != largest || argmaxima[i] != at;
    }
  }
  std::printf(wrong == 0 ? "ok\n" : "%d wrong results\n", wrong);
  return wrong == 0 ? 0 : 1;
}
