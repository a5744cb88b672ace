// The fused low-rank convolution kernels (csrc/include/trp/conv/lowrank_conv2d_fused.cuh) on the
// CPU emulation of CUDA (include/cuda_emulation.h), through their launch functions, on shapes
// chosen for the kernel's awkward cases -- tiles crossing images, halos, dilations, paddings
// wider than the kernel, several rank passes and column tiles, misaligned rows -- with tilings
// planned for 1 to 132 SMs. Every case is compared with a float64 two-convolution reference
// whose intermediate and output are rounded like the kernel's, and every output must have been
// written. The warp-level ldmatrix / mma.sync / cp.async come from include/trp/conv/
// mma_primitives.cuh, with the fragment layouts of the PTX ISA, as the kernel assumes them.
//
// Usage: fused_conv_emulation bf16|f16|f32|f32x3 [forward|reverse|random] -- one line per case
// (the optional order is that of the threads and blocks); exit status 1 when a case is off by
// more than its tolerance or leaves an output unwritten.
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "trp/conv/lowrank_conv2d_fused.h"
#include "trp/conv/lowrank_conv2d_fused_mma.cuh"

namespace {

using namespace trp::cuda;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

template <typename T>
float to_f(T v) {
  return fused::to_float(v);
}
template <typename T>
T from_f(float v) {
  return fused::from_float<T>(v);
}

int out_size(int in, int k, int s, int p, int d) {
  const int span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

struct Case {
  const char* scheme;
  int batch, channels, height, width, rank, out_channels, kh, kw;
  int stride[2], pad[2], dil[2];
  bool channels_last, bias;
  int sm_count;  // shapes the tiling: few SMs, large tiles
  int x_offset;  // elements: 1 misaligns channels_last rows for the 16-byte loads
};

// The fused kernel's view of a low-rank conv, as csrc/cuda/lowrank_conv2d_launch.cpp builds it.
FusedConvShape fused_shape(const Case& c) {
  const bool channel = std::string(c.scheme) == "channel";
  FusedConvShape s{};
  s.batch = c.batch;
  s.channels = c.channels;
  s.height = c.height;
  s.width = c.width;
  s.rank = c.rank;
  s.out_channels = c.out_channels;
  s.kh1 = c.kh;
  s.kw1 = channel ? c.kw : 1;
  s.stride1[0] = c.stride[0];
  s.pad1[0] = c.pad[0];
  s.dil1[0] = c.dil[0];
  s.stride1[1] = channel ? c.stride[1] : 1;
  s.pad1[1] = channel ? c.pad[1] : 0;
  s.dil1[1] = channel ? c.dil[1] : 1;
  s.kw2 = channel ? 1 : c.kw;
  s.stride2 = channel ? 1 : c.stride[1];
  s.pad2 = channel ? 0 : c.pad[1];
  s.dil2 = channel ? 1 : c.dil[1];
  s.mid_width = out_size(c.width, s.kw1, s.stride1[1], s.pad1[1], s.dil1[1]);
  s.out_height = out_size(c.height, c.kh, c.stride[0], c.pad[0], c.dil[0]);
  s.out_width = out_size(s.mid_width, s.kw2, s.stride2, s.pad2, s.dil2);
  s.channels_last = c.channels_last;
  return s;
}

template <typename T>
T* aligned(std::vector<T>& v) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(v.data()) + 15) & ~uintptr_t(15));
}

// Relative L2 error of the kernel's output, or 1 when an output was left unwritten.
template <typename T>
double run_case(const Case& c, Tf32Mode mode) {
  const FusedConvShape s = fused_shape(c);
  FusedConvPlan p;
  if (!plan_fused_conv(s, sizeof(T), FusedDeviceLimits{c.sm_count, 227 * 1024}, &p)) {
    std::printf("%s: not supported by the plan\n", c.scheme);
    return 1.0;
  }
  const int B = c.batch, C = c.channels, H = c.height, W = c.width, R = c.rank, N = c.out_channels;
  const int Ho = s.out_height, Wo = s.out_width, Wm = s.mid_width, k1 = s.kh1 * s.kw1;
  std::mt19937 gen(1234 + C * 7 + R);
  std::normal_distribution<float> normal;
  const auto draw = [&](std::size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& e : v) e = to_f(from_f<T>(normal(gen) * scale));  // representable in T
    return v;
  };
  const std::vector<float> x = draw(std::size_t(B) * C * H * W, 1.f), w1 = draw(std::size_t(R) * C * k1, .3f),
                           w2 = draw(std::size_t(N) * R * s.kw2, .3f), bias = draw(N, 1.f);

  std::vector<T> x_store(x.size() + 16), w1_store(w1.size()), w2_store(w2.size()), b_store(N);
  T* const xp = aligned(x_store) + c.x_offset;
  for (int b = 0; b < B; ++b)
    for (int ch = 0; ch < C; ++ch)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
          const std::size_t nchw = ((std::size_t(b) * C + ch) * H + h) * W + w;
          const std::size_t nhwc = ((std::size_t(b) * H + h) * W + w) * C + ch;
          xp[c.channels_last ? nhwc : nchw] = from_f<T>(x[nchw]);
        }
  // weight1 stored channels_last when x is (as a model converted with .to(channels_last) has it)
  WeightStrides strides{};
  for (int r = 0; r < R; ++r)
    for (int ch = 0; ch < C; ++ch)
      for (int t = 0; t < k1; ++t) {
        const std::size_t at = c.channels_last ? (std::size_t(r) * k1 + t) * C + ch
                                               : (std::size_t(r) * C + ch) * k1 + t;
        w1_store[at] = from_f<T>(w1[(std::size_t(r) * C + ch) * k1 + t]);
      }
  const int64_t st1[4] = {int64_t(C) * k1, c.channels_last ? 1 : k1, c.channels_last ? int64_t(s.kw1) * C : s.kw1,
                          c.channels_last ? C : 1};
  std::copy_n(st1, 4, strides.weight1);
  for (std::size_t i = 0; i < w2.size(); ++i) w2_store[i] = from_f<T>(w2[i]);
  const int64_t st2[4] = {int64_t(R) * s.kw2, s.kw2, s.kw2, 1};
  std::copy_n(st2, 4, strides.weight2);
  for (int n = 0; n < N; ++n) b_store[n] = from_f<T>(bias[n]);

  std::vector<T> packed1(packed_weight1_elements(s, p) + 16), packed2(packed_weight2_elements(s, p) + 16);
  std::vector<T> y(std::size_t(B) * N * Ho * Wo, from_f<T>(NAN));
  check(launch_pack_lowrank_weights<T>(w1_store.data(), w2_store.data(), strides, s, p,
                                       aligned(packed1), aligned(packed2), nullptr),
        "packing");
  const FusedConvTensors<T> t{xp, aligned(packed1), aligned(packed2), c.bias ? b_store.data() : nullptr,
                              y.data()};
  check(launch_lowrank_conv2d_fused<T>(t, s, p, mode, nullptr), "fused conv");

  // Reference: float64 convolutions; the intermediate and the output rounded to T like the
  // kernel's (so 16-bit types are checked to a few rounding flips, not to their epsilon).
  const auto round = [](double v) { return sizeof(T) == 2 ? double(to_f(from_f<T>(float(v)))) : v; };
  std::vector<double> mid(std::size_t(B) * R * Ho * Wm);
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < Ho; ++h)
        for (int w = 0; w < Wm; ++w) {
          double acc = 0;
          for (int ch = 0; ch < C; ++ch)
            for (int i = 0; i < s.kh1; ++i)
              for (int j = 0; j < s.kw1; ++j) {
                const int ih = h * s.stride1[0] - s.pad1[0] + i * s.dil1[0];
                const int iw = w * s.stride1[1] - s.pad1[1] + j * s.dil1[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += double(x[((std::size_t(b) * C + ch) * H + ih) * W + iw]) *
                       w1[(std::size_t(r) * C + ch) * k1 + i * s.kw1 + j];
              }
          mid[((std::size_t(b) * R + r) * Ho + h) * Wm + w] = round(acc);
        }
  double err = 0, norm = 0;
  int unwritten = 0;
  for (int b = 0; b < B; ++b)
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < Ho; ++h)
        for (int w = 0; w < Wo; ++w) {
          double acc = c.bias ? bias[n] : 0;
          for (int r = 0; r < R; ++r)
            for (int j = 0; j < s.kw2; ++j) {
              const int mw = w * s.stride2 - s.pad2 + j * s.dil2;
              if (mw < 0 || mw >= Wm) continue;
              acc += mid[((std::size_t(b) * R + r) * Ho + h) * Wm + mw] * w2[(std::size_t(n) * R + r) * s.kw2 + j];
            }
          const std::size_t at = c.channels_last ? ((std::size_t(b) * Ho + h) * Wo + w) * N + n
                                                 : ((std::size_t(b) * N + n) * Ho + h) * Wo + w;
          const double got = to_f(y[at]);
          if (std::isnan(got)) ++unwritten;
          err += (got - round(acc)) * (got - round(acc));
          norm += round(acc) * round(acc);
        }
  const double rel = std::sqrt(err / norm);
  std::printf("%-7s B%d C%-3d %3dx%-3d r%-3d N%-3d k%dx%d s%d,%d p%d,%d d%d,%d %-4s bias%d off%d | tile %dx%d "
              "mid %d window %dx%d blocks %lld smem %d | rel %.2e unwritten %d\n",
              c.scheme, B, C, H, W, R, N, c.kh, c.kw, c.stride[0], c.stride[1], c.pad[0], c.pad[1], c.dil[0],
              c.dil[1], c.channels_last ? "nhwc" : "nchw", c.bias, c.x_offset, p.tile_rows, p.tile_cols,
              p.mid_cols, p.patch_rows, p.patch_cols, static_cast<long long>(p.blocks), p.smem_bytes, rel,
              unwritten);
  return unwritten ? 1.0 : rel;
}

const Case kCases[] = {
    // scheme, B, C, H, W, r, N, kh, kw, stride, pad, dil, channels_last, bias, SMs, x offset
    {"channel", 2, 16, 8, 8, 5, 16, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 132, 0},
    {"channel", 2, 16, 8, 8, 5, 16, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 132, 0},
    {"channel", 2, 24, 9, 11, 20, 40, 3, 3, {2, 2}, {1, 1}, {1, 1}, false, true, 1, 0},
    {"channel", 2, 24, 9, 11, 20, 40, 3, 3, {2, 2}, {1, 1}, {1, 1}, true, false, 1, 0},
    {"channel", 1, 12, 10, 13, 7, 9, 3, 2, {2, 1}, {2, 0}, {2, 3}, true, true, 1, 1},
    {"channel", 1, 8, 7, 9, 80, 70, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 132, 0},
    {"channel", 1, 5, 3, 150, 3, 6, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 1, 0},
    {"channel", 1, 1, 4, 4, 1, 1, 1, 1, {1, 1}, {0, 0}, {1, 1}, false, true, 132, 0},
    {"channel", 1, 40, 6, 7, 130, 130, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 1, 0},
    {"channel", 1, 9, 20, 40, 17, 20, 7, 7, {1, 1}, {3, 3}, {1, 1}, true, true, 1, 0},
    {"channel", 2, 9, 20, 40, 17, 20, 5, 5, {1, 2}, {6, 2}, {3, 1}, false, true, 1, 0},
    {"channel", 3, 16, 9, 7, 12, 20, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 4, 0},
    {"channel", 3, 16, 9, 7, 12, 20, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 4, 0},
    {"channel", 2, 8, 9, 10, 6, 10, 1, 3, {2, 1}, {0, 1}, {1, 1}, false, true, 1, 0},
    {"channel", 2, 8, 30, 10, 6, 10, 3, 3, {2, 1}, {2, 1}, {3, 1}, true, true, 2, 0},
    {"spatial", 2, 16, 8, 8, 11, 16, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 132, 0},
    {"spatial", 2, 16, 8, 8, 11, 16, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 132, 0},
    {"spatial", 1, 16, 9, 13, 20, 24, 3, 3, {2, 2}, {1, 1}, {1, 1}, true, true, 1, 0},
    {"spatial", 1, 10, 11, 12, 9, 33, 5, 3, {1, 2}, {0, 3}, {2, 3}, false, true, 1, 0},
    {"spatial", 1, 10, 11, 12, 9, 33, 5, 3, {1, 2}, {0, 3}, {2, 3}, true, false, 1, 1},
    {"spatial", 1, 6, 3, 150, 70, 5, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 1, 0},
    {"spatial", 1, 40, 6, 7, 130, 70, 3, 3, {1, 1}, {1, 1}, {1, 1}, true, true, 1, 0},
    {"spatial", 1, 9, 20, 60, 17, 20, 3, 3, {1, 2}, {1, 40}, {1, 40}, false, true, 1, 0},
    {"spatial", 3, 16, 9, 7, 12, 20, 3, 3, {2, 1}, {0, 1}, {2, 1}, true, true, 3, 0},
    {"spatial", 5, 24, 6, 5, 30, 20, 3, 3, {1, 1}, {1, 1}, {1, 1}, false, true, 2, 0},
};

template <typename T>
int run_all(Tf32Mode mode, double tolerance) {
  double worst = 0;
  for (const Case& c : kCases) worst = std::max(worst, run_case<T>(c, mode));
  std::printf("worst relative error %.3e (tolerance %.1e)\n", worst, tolerance);
  return worst <= tolerance ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dtype = argc > 1 ? argv[1] : "";
  const std::string order = argc > 2 ? argv[2] : "forward";
  const cuda_emulation::Order how = order == "reverse" ? cuda_emulation::Order::kReverse
                                    : order == "random" ? cuda_emulation::Order::kRandom
                                                        : cuda_emulation::Order::kForward;
  cuda_emulation::set_schedule({how, how, 1});
  if (dtype == "bf16") return run_all<__nv_bfloat16>(Tf32Mode::kSingle, 1e-3);
  if (dtype == "f16") return run_all<__half>(Tf32Mode::kSingle, 1e-3);
  if (dtype == "f32x3") return run_all<float>(Tf32Mode::kSplit3, 1e-5);
  if (dtype == "f32") return run_all<float>(Tf32Mode::kSingle, 2e-3);
  std::fprintf(stderr, "usage: %s bf16|f16|f32|f32x3 [forward|reverse|random]\n", argv[0]);
  return 2;
}
