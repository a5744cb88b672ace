// trp::lowrank_conv2d and its backward on CUDA. Forward: the fused kernel
// (lowrank_conv2d_fused.h), two cuDNN convolutions, or one with the rebuilt weight; backward:
// the two_convs or the dense composition (the fused implementation's backward is the two_convs
// one: no fused backward kernel exists, see docs/cuda_conv.md). Each op picks, per problem, the
// fastest of its candidates by measurement (measured_choice.h), unless TRP_CONV_IMPL forces one
// (conv_impl.h); fused is a candidate only once the package has validated it on a GPU
// (fused_conv_in_auto, conv_impl.h), until then the choice is between two_convs and dense.
// Forward and backward choose separately: the backward recomputes the intermediate and so does
// not depend on how the forward ran, so the best training step is the best forward plus the
// best backward.
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "trp/checks.h"
#include "trp/conv_impl.h"
#include "trp/cuda_launch.h"
#include "trp/lowrank_conv2d_composite.h"
#include "trp/conv/lowrank_conv2d_fused.h"
#include "trp/measured_choice.h"

namespace trp {
namespace {

struct DeviceFacts {
  int compute_major;
  cuda::FusedDeviceLimits limits;
  std::string identity;  // what a stored choice names the device by (conv_choice_store.h)
};

const DeviceFacts& device_facts(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, DeviceFacts> facts;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = facts.find(device);
  if (it == facts.end()) {
    DeviceFacts f{};
    TRP_CUDA_CHECK(cudaDeviceGetAttribute(&f.compute_major, cudaDevAttrComputeCapabilityMajor,
                                          device));
    TRP_CUDA_CHECK(
        cudaDeviceGetAttribute(&f.limits.sm_count, cudaDevAttrMultiProcessorCount, device));
    TRP_CUDA_CHECK(cudaDeviceGetAttribute(&f.limits.max_smem_per_block,
                                          cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaDeviceProp properties;
    TRP_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    // The name, compute capability and SM count (a MIG slice or a cut-down part has fewer),
    // and cuDNN's version: a choice between cuDNN's convolutions and ours is only as good as
    // the cuDNN it timed.
    const at::CUDAHooksInterface& hooks = at::detail::getCUDAHooks();
    f.identity = std::string(properties.name) + ";sm_" + std::to_string(properties.major) +
                 std::to_string(properties.minor) + ";" +
                 std::to_string(properties.multiProcessorCount) + " SMs;cuDNN " +
                 std::to_string(hooks.hasCuDNN() ? hooks.versionRuntimeCuDNN() : 0);
    it = facts.emplace(device, f).first;
  }
  return it->second;
}

struct FusedProblem {
  cuda::FusedConvShape shape;
  cuda::FusedConvPlan plan;
};

// The fused kernel's view of the call, or nothing where the kernel does not take it: float64,
// rank 0, GPUs before sm_80, sizes past int32, tiles that do not fit shared memory.
std::optional<FusedProblem> fused_problem(const at::Tensor& x, const at::Tensor& weight1,
                                          const at::Tensor& weight2, const LowRankGeometry& g) {
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) return std::nullopt;
  for (const int64_t size : {x.size(1), x.size(2), x.size(3), weight1.size(0), weight2.size(0)}) {
    if (size > INT_MAX) return std::nullopt;
  }
  const DeviceFacts& device = device_facts(x.get_device());
  if (device.compute_major < 8) return std::nullopt;
  const auto narrow = [](int64_t v) { return static_cast<int>(v); };
  cuda::FusedConvShape s{};
  s.batch = x.size(0);
  s.channels = narrow(x.size(1));
  s.height = narrow(x.size(2));
  s.width = narrow(x.size(3));
  s.rank = narrow(weight1.size(0));
  s.out_channels = narrow(weight2.size(0));
  s.kh1 = narrow(weight1.size(2));
  s.kw1 = narrow(weight1.size(3));
  for (int d = 0; d < 2; ++d) {
    s.stride1[d] = narrow(g.first.stride[d]);
    s.pad1[d] = narrow(g.first.padding[d]);
    s.dil1[d] = narrow(g.first.dilation[d]);
  }
  s.kw2 = narrow(weight2.size(3));
  s.stride2 = narrow(g.second.stride[1]);
  s.pad2 = narrow(g.second.padding[1]);
  s.dil2 = narrow(g.second.dilation[1]);
  s.mid_width = narrow(conv_out_size(s.width, s.kw1, s.stride1[1], s.pad1[1], s.dil1[1]));
  s.out_height = narrow(conv_out_size(s.height, s.kh1, s.stride1[0], s.pad1[0], s.dil1[0]));
  s.out_width = narrow(conv_out_size(s.mid_width, s.kw2, s.stride2, s.pad2, s.dil2));
  s.channels_last = memory_format_of(x) == at::MemoryFormat::ChannelsLast;
  FusedProblem f{s, {}};
  if (!cuda::plan_fused_conv(s, static_cast<int>(x.element_size()), device.limits, &f.plan)) {
    return std::nullopt;
  }
  return f;
}

template <typename T>
void launch_fused(const at::Tensor& x, const at::Tensor& weight1, const at::Tensor& weight2,
                  const at::Tensor& bias, at::Tensor& packed, int64_t packed2_offset,
                  at::Tensor& y, const FusedProblem& f) {
  cuda::WeightStrides strides{};
  std::copy_n(weight1.strides().begin(), 4, strides.weight1);
  std::copy_n(weight2.strides().begin(), 4, strides.weight2);
  // fp32 follows the precision the user allowed cuDNN convolutions (torch.backends.cudnn
  // .allow_tf32, on by default): tf32 when allowed, else 3xTF32, accurate to about fp32.
  const cuda::Tf32Mode mode = at::globalContext().allowTF32CuDNN(at::Float32Op::CONV)
                                  ? cuda::Tf32Mode::kSingle
                                  : cuda::Tf32Mode::kSplit3;
  const cudaStream_t stream = current_stream();
  const auto data = [](const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); };
  T* w1_packed = static_cast<T*>(packed.mutable_data_ptr());
  T* w2_packed = w1_packed + packed2_offset;
  TRP_CUDA_CHECK(cuda::launch_pack_lowrank_weights<T>(data(weight1), data(weight2), strides,
                                                      f.shape, f.plan, w1_packed, w2_packed,
                                                      stream));
  const cuda::FusedConvTensors<T> tensors{data(x), w1_packed, w2_packed,
                                          bias.defined() ? data(bias) : nullptr,
                                          static_cast<T*>(y.mutable_data_ptr())};
  TRP_CUDA_CHECK(cuda::launch_lowrank_conv2d_fused<T>(tensors, f.shape, f.plan, mode, stream));
}

at::Tensor run_fused(const at::Tensor& x, const at::Tensor& weight1, const at::Tensor& weight2,
                     const std::optional<at::Tensor>& bias, const FusedProblem& f) {
  const cuda::FusedConvShape& s = f.shape;
  const at::MemoryFormat format = memory_format_of(x);
  const at::Tensor input = x.contiguous(format);
  at::Tensor y = at::empty({s.batch, s.out_channels, s.out_height, s.out_width},
                           x.options().memory_format(format));
  // Both packed factors in one allocation (packed again on every call: the weights change
  // between training steps). weight2's copy starts on a 128-byte boundary, as an allocation
  // of its own would, for the kernel's 16-byte cp.async staging.
  const int64_t align = 128 / x.element_size();
  const int64_t packed2_offset =
      (cuda::packed_weight1_elements(s, f.plan) + align - 1) / align * align;
  at::Tensor packed =
      at::empty({packed2_offset + cuda::packed_weight2_elements(s, f.plan)}, x.options());
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  switch (x.scalar_type()) {
    case at::kFloat:
      launch_fused<float>(input, weight1, weight2, b, packed, packed2_offset, y, f);
      break;
    case at::kHalf:
      launch_fused<__half>(input, weight1, weight2, b, packed, packed2_offset, y, f);
      break;
    case at::kBFloat16:
      launch_fused<__nv_bfloat16>(input, weight1, weight2, b, packed, packed2_offset, y,
                                   f);
      break;
    default:
      TORCH_CHECK(false, "fused low-rank conv: unsupported dtype ", x.scalar_type());
  }
  return y;
}

// Everything that changes which implementation is fastest, or which may be chosen.
// `direction`: 0 forward, else 1 + the backward's output mask as bits. The layout is x's alone:
// the backward runs grad_out in x's layout (lowrank_conv2d_backward_cuda), so that an eager
// call and a compiled one, whose grad_out torch.compile may lay out otherwise, are one problem
// with one choice and one result.
using ConvKey = ProblemKey<24>;
constexpr std::size_t kDeviceField = 1;  // the device index: no part of a stored key

ConvKey problem_key(int64_t direction, const at::Tensor& x, const at::Tensor& weight1,
                    const at::Tensor& weight2, bool has_bias, Scheme scheme,
                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                    c10::IntArrayRef dilation) {
  const at::Context& context = at::globalContext();
  const KernelSize kernel =
      lowrank_kernel_size(scheme, weight1.size(2), weight1.size(3), weight2.size(3));
  return {direction,
          x.get_device(),
          static_cast<int64_t>(x.scalar_type()),
          static_cast<int64_t>(memory_format_of(x)),
          static_cast<int64_t>(scheme),
          x.size(0),
          x.size(1),
          x.size(2),
          x.size(3),
          weight1.size(0),
          weight2.size(0),
          kernel.kh,
          kernel.kw,
          stride[0],
          stride[1],
          padding[0],
          padding[1],
          dilation[0],
          dilation[1],
          has_bias,
          context.allowTF32CuDNN(at::Float32Op::CONV),
          context.benchmarkCuDNN(),
          context.deterministicCuDNN(),
          fused_conv_in_auto()};
}

using ConvChoice = MeasuredChoice<std::tuple_size_v<ConvKey>>;

ConvChoice& conv_choices() {  // one cache for the forward and the backward (`direction` keys)
  static ConvChoice choices;
  return choices;
}

ConvChoice::Candidate candidate(ConvImpl impl, int launches) {
  return {static_cast<int>(impl), conv_impl_name(impl), launches};
}

// The problem as the store keys it: the device's identity instead of its index (another
// process may number its devices otherwise), then every other field of the key.
std::string stored_key(const ConvKey& key, int device) {
  std::string text = device_facts(device).identity + ";";
  for (std::size_t i = 0; i < key.size(); ++i) {
    if (i == kDeviceField) continue;
    text += std::to_string(key[i]) + (i + 1 < key.size() ? "," : "");
  }
  return text;
}

int impl_id(const std::string& name) {
  for (ConvImpl impl : {ConvImpl::kFused, ConvImpl::kTwoConvs, ConvImpl::kDense}) {
    if (name == conv_impl_name(impl)) return static_cast<int>(impl);
  }
  return -1;
}

// The measured choice among `candidates()` (listed only when measuring), or two_convs (the
// composition that defines the op) while a CUDA graph is captured and nothing is stored. A
// stored choice counts only if `allowed` (a file may name what this call cannot run).
template <typename Run, typename Allowed>
ConvImpl measured_impl(const ConvKey& key, int device,
                       const std::function<std::vector<ConvChoice::Candidate>()>& candidates,
                       const Run& run, const Allowed& allowed) {
  const auto id_of = [&](const std::string& name) {
    const int id = impl_id(name);
    return id >= 0 && allowed(static_cast<ConvImpl>(id)) ? id : -1;
  };
  const ConvChoice::Calls calls{candidates, [&](int id) { run(static_cast<ConvImpl>(id)); },
                                [&] { return stored_key(key, device); }, id_of};
  const int chosen = conv_choices().choose(key, static_cast<int>(ConvImpl::kTwoConvs),
                                           current_stream(), calls);
  return static_cast<ConvImpl>(chosen);
}

// The kernels an implementation launches, counted from the compositions (a cuDNN convolution
// or a matmul counts as one; cuDNN may split one into more): the tie rule of the choice prefers
// fewer (trp/fastest_candidate.h).
int forward_launches(ConvImpl impl, bool channels_last) {
  switch (impl) {
    case ConvImpl::kFused:
      return 2;  // pack the weights, the fused kernel
    case ConvImpl::kTwoConvs:
      return 2;  // two convolutions, the bias in the second
    case ConvImpl::kDense:
      return 2 + channels_last;  // the weight's matmul (and its channels_last copy), one conv
  }
  return 0;
}

int backward_launches(ConvImpl impl, bool channels_last, std::array<bool, 4> mask) {
  const auto [need_x, need_w1, need_w2, need_bias] = mask;
  if (impl == ConvImpl::kDense) {
    // the weight (and its copy), the conv backward's data, weight and bias gradients, a matmul
    // per factor gradient
    return 1 + channels_last + need_x + (need_w1 || need_w2) + need_bias + need_w1 + need_w2;
  }
  // recompute the intermediate, its gradient and weight2's, then x's and weight1's, the bias sum
  return 1 + (need_x || need_w1) + need_w2 + need_x + need_w1 + need_bias;
}

at::Tensor lowrank_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight1,
                               const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                               c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, c10::string_view scheme_name) {
  const Scheme scheme = parse_scheme(scheme_name);
  const LowRankGeometry g =
      check_lowrank_conv2d(x, weight1, weight2, bias, stride, padding, dilation, scheme);
  const c10::cuda::CUDAGuard guard(x.device());
  const Conv2dParams layer = conv2d_params(stride, padding, dilation);
  // The fused kernel's plan, worked out only where fused may run (forced, or measured).
  std::optional<std::optional<FusedProblem>> fused_memo;
  const auto fused = [&]() -> const std::optional<FusedProblem>& {
    if (!fused_memo.has_value()) fused_memo.emplace(fused_problem(x, weight1, weight2, g));
    return *fused_memo;
  };
  const auto run = [&](ConvImpl impl) {
    switch (impl) {
      case ConvImpl::kFused:
        TORCH_INTERNAL_ASSERT(fused().has_value(), "fused conv chosen where it cannot run");
        return run_fused(x, weight1, weight2, bias, *fused());
      case ConvImpl::kDense:
        return lowrank_conv2d_dense(x, weight1, weight2, bias, scheme, layer);
      case ConvImpl::kTwoConvs:
        break;
    }
    return lowrank_conv2d_two_convs(x, weight1, weight2, bias, g);
  };
  if (const std::optional<ConvImpl> forced = forced_conv_impl()) {
    // fused where its kernel cannot run: two_convs.
    const bool runs = *forced != ConvImpl::kFused || fused().has_value();
    return run(runs ? *forced : ConvImpl::kTwoConvs);
  }
  const bool has_bias = bias.has_value() && bias->defined();
  const ConvKey key = problem_key(0, x, weight1, weight2, has_bias, scheme, stride, padding,
                                  dilation);
  const bool channels_last = memory_format_of(x) == at::MemoryFormat::ChannelsLast;
  // fused only once the package has validated it (fused_conv_in_auto, conv_impl.h), and where
  // its kernel takes the call
  const auto allowed = [&](ConvImpl impl) {
    return impl != ConvImpl::kFused || (fused_conv_in_auto() && fused().has_value());
  };
  const auto candidates = [&] {
    std::vector<ConvChoice::Candidate> list;
    for (ConvImpl impl : {ConvImpl::kFused, ConvImpl::kTwoConvs, ConvImpl::kDense}) {
      if (allowed(impl)) list.push_back(candidate(impl, forward_launches(impl, channels_last)));
    }
    return list;
  };
  return run(measured_impl(key, x.get_device(), candidates, run, allowed));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight1,
    const at::Tensor& weight2, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, c10::string_view scheme_name, std::array<bool, 4> output_mask) {
  const Scheme scheme = parse_scheme(scheme_name);
  const LowRankGeometry g = check_lowrank_conv2d(x, weight1, weight2, std::nullopt, stride,
                                                 padding, dilation, scheme);
  const c10::cuda::CUDAGuard guard(x.device());
  const Conv2dParams layer = conv2d_params(stride, padding, dilation);
  // grad_out in x's layout (a copy only where they differ, as when torch.compile hands the
  // backward a contiguous grad_out of a channels_last output): the same problem, the same
  // choice and the same result, eager or compiled (problem_key).
  const at::Tensor grad = grad_out.contiguous(memory_format_of(x));
  const auto run = [&](ConvImpl impl) {
    if (impl == ConvImpl::kDense) {
      return lowrank_conv2d_dense_backward(grad, x, weight1, weight2, scheme, layer,
                                           output_mask);
    }
    return lowrank_conv2d_two_convs_backward(grad, x, weight1, weight2, g, output_mask);
  };
  if (const std::optional<ConvImpl> forced = forced_conv_impl()) {
    // No fused backward kernel exists: forcing fused runs the two_convs backward.
    return run(*forced == ConvImpl::kDense ? ConvImpl::kDense : ConvImpl::kTwoConvs);
  }
  int64_t direction = 1;
  for (int i = 0; i < 4; ++i) direction += static_cast<int64_t>(output_mask[i]) << i;
  const ConvKey key = problem_key(direction, x, weight1, weight2, output_mask[3], scheme, stride,
                                  padding, dilation);
  const bool channels_last = memory_format_of(x) == at::MemoryFormat::ChannelsLast;
  const auto candidates = [&] {
    std::vector<ConvChoice::Candidate> list;
    for (ConvImpl impl : {ConvImpl::kTwoConvs, ConvImpl::kDense}) {
      list.push_back(candidate(impl, backward_launches(impl, channels_last, output_mask)));
    }
    return list;
  };
  // no fused backward kernel: a stored "fused" (a file edited by hand) is not obeyed
  return run(measured_impl(key, x.get_device(), candidates, run,
                           [](ConvImpl impl) { return impl != ConvImpl::kFused; }));
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, CUDA, m) {
  m.impl("lowrank_conv2d", &lowrank_conv2d_cuda);
  m.impl("lowrank_conv2d_backward", &lowrank_conv2d_backward_cuda);
}

}  // namespace trp
