// Host emulation of csrc/include/trp/conv/mma_primitives.cuh, found first on the include path. The
// lanes of a warp (fibers) rendezvous on a barrier to exchange operands, so ldmatrix and
// mma.sync see the whole warp's registers, with the fragment layouts of the PTX ISA that the real
// header's comment states. cp.async copies land when the issuing thread waits, as late as the
// hardware may complete them. Shared memory is the kernel's own `smem` array (declared at block
// scope in namespace trp::cuda::fused, defined by the harness); accesses outside the block's
// dynamic size abort.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>
#include <vector>

namespace trp::cuda::fused {
extern unsigned char smem[];
}

struct EmulatedWarp {
  EmulatedBarrier barrier{32};
  uint32_t address[32];
  uint32_t a[32][4], b[32][2];
};
struct PendingCopy {
  uint32_t dst;
  const void* src;
};
extern EmulatedWarp* emulated_warps;
extern std::vector<PendingCopy>* emulated_pending_copies;  // one list per thread of the block
extern std::size_t emulated_smem_bytes;

namespace trp::cuda {

constexpr int kMmaStepBytes = 32;

[[noreturn]] inline void emulation_fault(const char* what) {
  std::fprintf(stderr, "emulation fault: %s\n", what);
  std::abort();
}

inline uint32_t shared_address(const void* p) {
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < fused::smem || q > fused::smem + emulated_smem_bytes) emulation_fault("not shared memory");
  return static_cast<uint32_t>(q - fused::smem);
}

inline void check_shared(uint32_t address, uint32_t bytes, uint32_t alignment) {
  if (address % alignment != 0) emulation_fault("misaligned shared-memory access");
  if (address + bytes > emulated_smem_bytes) emulation_fault("shared-memory access out of range");
}

inline EmulatedWarp& this_warp() { return emulated_warps[threadIdx.x / 32]; }

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  const int lane = threadIdx.x % 32;
  EmulatedWarp& w = this_warp();
  check_shared(address, 16, 16);
  w.address[lane] = address;
  w.barrier.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {  // tile i: rows from lanes 8i..8i+7; lane gets word lane%4 of row lane/4
    std::memcpy(&r[i], fused::smem + w.address[8 * i + lane / 4] + 4 * (lane % 4), 4);
  }
  w.barrier.arrive_and_wait();
}

// d += A * B over `words` 4-byte K words per row; word_product multiplies two words.
template <typename WordProduct>
inline void mma_emulated(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                         WordProduct word_product) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  EmulatedWarp& w = this_warp();
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  w.b[lane][0] = b0;
  w.b[lane][1] = b1;
  w.barrier.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    double acc = d[i];
    for (int word = 0; word < 8; ++word) {
      // A: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (t, g), b1 (t + 4, g)
      const uint32_t aw = w.a[4 * (row % 8) + word % 4][row / 8 + 2 * (word / 4)];
      const uint32_t bw = w.b[4 * col + word % 4][word / 4];
      acc += word_product(aw, bw);
    }
    d[i] = static_cast<float>(acc);
  }
  w.barrier.arrive_and_wait();
}

template <typename T>
inline double half_word_product(uint32_t x, uint32_t y) {
  double sum = 0;
  for (int h = 0; h < 2; ++h) {
    const uint16_t xs = static_cast<uint16_t>(x >> (16 * h)), ys = static_cast<uint16_t>(y >> (16 * h));
    T u, v;
    std::memcpy(&u, &xs, 2);
    std::memcpy(&v, &ys, 2);
    if constexpr (std::is_same_v<T, __half>) {
      sum += double(__half2float(u)) * __half2float(v);
    } else {
      sum += double(__bfloat162float(u)) * __bfloat162float(v);
    }
  }
  return sum;
}

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_emulated(d, a, b0, b1, half_word_product<T>);
}

inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_emulated(d, a, b0, b1, [](uint32_t x, uint32_t y) {
    if ((x & 0x1fffu) != 0 || (y & 0x1fffu) != 0) emulation_fault("tf32 operand not rounded");
    return double(__uint_as_float(x)) * __uint_as_float(y);
  });
}

inline uint32_t to_tf32(uint32_t bits) {  // nearest, ties away from zero
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & ~0x1fffu;
}

inline void cp_async_16(uint32_t shared_dst, const void* global_src) {
  check_shared(shared_dst, 16, 16);
  if (reinterpret_cast<uintptr_t>(global_src) % 16 != 0) emulation_fault("misaligned cp.async source");
  emulated_pending_copies[threadIdx.x].push_back({shared_dst, global_src});
}

inline void cp_async_commit() {}

inline void cp_async_wait_all() {
  std::vector<PendingCopy>& pending = emulated_pending_copies[threadIdx.x];
  for (const PendingCopy& c : pending) std::memcpy(fused::smem + c.dst, c.src, 16);
  pending.clear();
}

}  // namespace trp::cuda
