// Warp-level tensor-core and asynchronous-copy primitives of sm_80 and later (inline PTX), as
// the fused convolution kernels use them. Fragment layouts follow the PTX ISA ("Matrix
// Fragments for mma.m16n8k16 / mma.m16n8k8"); with lane = 4 * g + t:
//   A 16 x K (row-major), 4 registers: a0 (row g, k-word t), a1 (row g + 8, word t),
//                                      a2 (row g, word t + 4), a3 (row g + 8, word t + 4)
//   B K x 8 (column-major), 2 registers: b0 (k-word t, col g), b1 (k-word t + 4, col g)
//   C 16 x 8 float, 4 registers: c0, c1 (row g, cols 2t, 2t + 1), c2, c3 (row g + 8, same cols)
// where a "k-word" is 4 bytes: two 16-bit elements (m16n8k16) or one tf32 (m16n8k8). Both
// shapes therefore consume 32 bytes of K per row, and ldmatrix, which hands lane (g, t) word t
// of row g of each 8 x 16-byte tile, builds A and B fragments of either from shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace trp::cuda {

// Bytes of K that one mma step consumes per row, whatever the element type.
constexpr int kMmaStepBytes = 32;

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8 x 16-byte tiles; lanes 8i .. 8i + 7 give the row addresses of tile i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// D = A * B + D, A 16 x 16 and B 16 x 8 in bf16 or fp16, D in float.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + D, A 16 x 8 and B 8 x 8 in tf32 (fp32 bit patterns rounded by to_tf32).
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// fp32 -> tf32, rounded to nearest (ties away), as cuBLAS and cuDNN round.
__device__ __forceinline__ uint32_t to_tf32(uint32_t fp32_bits) {
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(out) : "f"(__uint_as_float(fp32_bits)));
  return out;
}

// 16-byte global -> shared copy that bypasses registers (and L1); completes at cp_async_wait.
__device__ __forceinline__ void cp_async_16(uint32_t shared_dst, const void* global_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_dst), "l"(global_src));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits for every cp.async this thread issued; other threads' copies need a barrier after it.
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

}  // namespace trp::cuda
