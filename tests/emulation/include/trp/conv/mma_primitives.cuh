// The emulation's csrc/include/trp/conv/mma_primitives.cuh, found first on the include path:
// the same functions, made of warp collectives of the emulated runtime (cuda_emulation.h). The
// lanes of a warp exchange their operands, so ldmatrix and mma.sync see the whole warp's
// registers, with the fragment layouts of the PTX ISA that the real header's comment states.
// A cp.async copy lands when the issuing thread waits for it, as late as the hardware may
// complete it; one never waited for is a fault when its block ends. Shared-memory addresses are
// offsets into the block's dynamic shared memory; accesses outside it, or misaligned, abort.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <source_location>
#include <type_traits>
#include <vector>

namespace trp::cuda {

constexpr int kMmaStepBytes = 32;

namespace emulated_mma {

struct PendingCopy {
  uint32_t dst;
  const void* src;
};

// The cp.async copies each thread of the running block has issued and not yet waited for.
inline std::vector<std::vector<PendingCopy>>& pending_copies() {
  static std::vector<std::vector<PendingCopy>> pending;
  return pending;
}

inline void check_no_pending_copies() {
  for (std::vector<PendingCopy>& copies : pending_copies()) {
    if (!copies.empty()) {
      copies.clear();
      cuda_emulation::fault("cp.async never waited for");
    }
  }
}

inline std::vector<PendingCopy>& my_pending_copies() {
  static const bool checked =
      (cuda_emulation::add_block_exit_check(&check_no_pending_copies), true);
  (void)checked;
  std::vector<std::vector<PendingCopy>>& all = pending_copies();
  const unsigned thread = cuda_emulation::linear_thread();
  if (all.size() <= thread) all.resize(thread + 1);
  return all[thread];
}

inline void check_shared(uint32_t address, uint32_t bytes, uint32_t alignment) {
  if (address % alignment != 0) cuda_emulation::fault("misaligned shared-memory access");
  if (address + bytes > cuda_emulation::dynamic_shared_bytes()) {
    cuda_emulation::fault("shared-memory access out of range");
  }
}

// The 32 lanes' T, lane i's at [i].
template <typename T>
std::array<T, 32> gather(const T& mine, const char* what, std::source_location site) {
  const unsigned char* all = cuda_emulation::warp_exchange(0xffffffffu, what, &mine, sizeof(T),
                                                           site);
  std::array<T, 32> lanes;
  for (unsigned lane = 0; lane < 32; ++lane) lanes[lane] = cuda_emulation::exchanged<T>(all, lane);
  return lanes;
}

}  // namespace emulated_mma

inline uint32_t shared_address(const void* p) {
  const auto* q = static_cast<const unsigned char*>(p);
  const unsigned char* base = cuda_emulation::dynamic_shared();
  if (base == nullptr || q < base || q > base + cuda_emulation::dynamic_shared_bytes()) {
    cuda_emulation::fault("not a shared-memory address");
  }
  return static_cast<uint32_t>(q - base);
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t address,
                        std::source_location site = std::source_location::current()) {
  emulated_mma::check_shared(address, 16, 16);
  const std::array<uint32_t, 32> rows = emulated_mma::gather(address, "ldmatrix", site);
  const int lane = static_cast<int>(cuda_emulation::lane_id());
  const unsigned char* shared = cuda_emulation::dynamic_shared();
  // Tile i: rows from lanes 8i .. 8i + 7; a lane gets word lane % 4 of row lane / 4.
  for (int i = 0; i < 4; ++i) {
    std::memcpy(&r[i], shared + rows[8 * i + lane / 4] + 4 * (lane % 4), 4);
  }
}

namespace emulated_mma {

struct Operands {
  uint32_t a[4], b[2];
};

// d += A * B over 8 four-byte K words per row; word_product multiplies two words.
template <typename WordProduct>
void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
         WordProduct word_product, std::source_location site) {
  const Operands mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const std::array<Operands, 32> w = gather(mine, "mma.sync", site);
  const int lane = static_cast<int>(cuda_emulation::lane_id()), g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    double acc = d[i];
    for (int word = 0; word < 8; ++word) {
      // A: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (t, g), b1 (t + 4, g)
      const uint32_t aw = w[4 * (row % 8) + word % 4].a[row / 8 + 2 * (word / 4)];
      const uint32_t bw = w[4 * col + word % 4].b[word / 4];
      acc += word_product(aw, bw);
    }
    d[i] = static_cast<float>(acc);
  }
}

template <typename T>
double half_word_product(uint32_t x, uint32_t y) {
  double sum = 0;
  for (int h = 0; h < 2; ++h) {
    const auto xs = static_cast<uint16_t>(x >> (16 * h)), ys = static_cast<uint16_t>(y >> (16 * h));
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

}  // namespace emulated_mma

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                      std::source_location site = std::source_location::current()) {
  emulated_mma::mma(d, a, b0, b1, emulated_mma::half_word_product<T>, site);
}

inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                          std::source_location site = std::source_location::current()) {
  emulated_mma::mma(
      d, a, b0, b1,
      [](uint32_t x, uint32_t y) {
        if ((x & 0x1fffu) != 0 || (y & 0x1fffu) != 0) {
          cuda_emulation::fault("tf32 operand not rounded");
        }
        return double(__uint_as_float(x)) * __uint_as_float(y);
      },
      site);
}

inline uint32_t to_tf32(uint32_t bits) {  // nearest, ties away from zero
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & ~0x1fffu;
}

inline void cp_async_16(uint32_t shared_dst, const void* global_src) {
  emulated_mma::check_shared(shared_dst, 16, 16);
  if (reinterpret_cast<uintptr_t>(global_src) % 16 != 0) {
    cuda_emulation::fault("misaligned cp.async source");
  }
  emulated_mma::my_pending_copies().push_back({shared_dst, global_src});
}

inline void cp_async_commit() {}

inline void cp_async_wait_all() {
  std::vector<emulated_mma::PendingCopy>& pending = emulated_mma::my_pending_copies();
  unsigned char* shared = cuda_emulation::dynamic_shared();
  for (const emulated_mma::PendingCopy& c : pending) std::memcpy(shared + c.dst, c.src, 16);
  pending.clear();
}

}  // namespace trp::cuda
