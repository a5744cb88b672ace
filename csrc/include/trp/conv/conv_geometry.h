// How a low-rank conv splits into its two thin convolutions (docs/design.md, "The schemes").
// Plain C++ shared by the CPU op, the CUDA launchers and the CUDA kernels.
#pragma once

#include <cstdint>

namespace trp {

enum class Scheme : int { kChannel = 0, kSpatial = 1 };

struct Conv2dParams {
  int64_t stride[2];
  int64_t padding[2];
  int64_t dilation[2];
};

// Parameters of the first conv (C -> r) and the second conv (r -> N).
struct LowRankGeometry {
  Conv2dParams first;
  Conv2dParams second;
};

inline LowRankGeometry lowrank_geometry(Scheme scheme, const int64_t stride[2],
                                        const int64_t padding[2], const int64_t dilation[2]) {
  LowRankGeometry g{};
  if (scheme == Scheme::kChannel) {
    // k x k conv with the layer's geometry, then a 1 x 1 conv.
    g.first = {{stride[0], stride[1]}, {padding[0], padding[1]}, {dilation[0], dilation[1]}};
    g.second = {{1, 1}, {0, 0}, {1, 1}};
  } else {
    // k x 1 conv carries the vertical geometry, 1 x k conv the horizontal one.
    g.first = {{stride[0], 1}, {padding[0], 0}, {dilation[0], 1}};
    g.second = {{1, stride[1]}, {0, padding[1]}, {1, dilation[1]}};
  }
  return g;
}

// The kh x kw of the dense kernel a factor pair stands for, from the factors' spatial sizes
// (weight1 [r, C, kh, kw1], weight2 [N, r, kh2, kw2]): kh is weight1's in both schemes; kw is
// weight1's in the channel scheme (weight2 is 1 x 1) and weight2's in the spatial one
// (weight1 is kh x 1).
struct KernelSize {
  int64_t kh, kw;
};

inline KernelSize lowrank_kernel_size(Scheme scheme, int64_t weight1_kh, int64_t weight1_kw,
                                      int64_t weight2_kw) {
  return {weight1_kh, scheme == Scheme::kChannel ? weight1_kw : weight2_kw};
}

// Output size of one spatial dimension of a convolution; 0 means the input is too small.
inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                             int64_t dilation) {
  const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

}  // namespace trp
