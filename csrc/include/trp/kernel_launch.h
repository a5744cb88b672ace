// The two constructs of the kernels' CUDA C++ that a host compiler cannot parse: a launch,
// `kernel<<<grid, block, bytes, stream>>>(args...)`, and a block's dynamic shared memory,
// `extern __shared__ unsigned char name[]`. Kernel sources write them through these macros,
// which under nvcc are exactly that syntax. Compiled by a host compiler, the CUDA runtime found on
// the include path is the CPU emulation of tests/emulation, which provides the two functions
// named below: so the CPU runs the very source that nvcc compiles (docs/cuda_svd.md, "CPU
// emulation").
#pragma once

#if defined(__CUDACC__)
// TRP_LAUNCH(kernel, grid, block, bytes, stream)(args...)
#define TRP_LAUNCH(kernel, grid, block, bytes, stream) kernel<<<grid, block, bytes, stream>>>
#define TRP_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#else
#define TRP_LAUNCH(kernel, grid, block, bytes, stream) \
  ::cuda_emulation::launch(kernel, grid, block, bytes, stream)
#define TRP_DYNAMIC_SHARED(name) unsigned char* const name = ::cuda_emulation::dynamic_shared()
#endif
