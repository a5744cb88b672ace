// The emulated CUDA device as a PyTorch device (the PrivateUse1 backend, named "emulated_cuda"
// by tests/emulated_cuda.py): tensors live in host memory, so the emulated kernels can use their
// data pointers; every ATen op without a kernel of its own here runs on the CPU through the
// CPU fallback (inputs copied to CPU tensors, results copied back). The trp ops get their
// kernels from the launchers of csrc/cuda (launchers.cpp).
//
// Fresh memory is filled with 0xff bytes (NaN as float, -1 as integer), as device memory holds
// garbage: a kernel that reads what nobody wrote shows it.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/native/TensorFactories.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace {

constexpr c10::DeviceType kDevice = c10::DeviceType::PrivateUse1;

void free_memory(void* p) { std::free(p); }

struct PoisoningAllocator final : c10::Allocator {
  c10::DataPtr allocate(std::size_t bytes) override {
    void* p = nullptr;
    if (bytes > 0) {
      p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);  // as cudaMalloc aligns
      TORCH_CHECK(p != nullptr, "emulated device: out of memory allocating ", bytes, " bytes");
      std::memset(p, 0xff, bytes);
    }
    return {p, p, &free_memory, c10::Device(kDevice, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_memory; }
  void copy_data(void* dst, const void* src, std::size_t bytes) const override {
    std::memcpy(dst, src, bytes);
  }
};

PoisoningAllocator allocator;

// One device, whose work is done by the time it is enqueued: every event has happened, every
// stream is idle.
struct Guard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kDevice; }
  c10::Device exchangeDevice(c10::Device) const override { return {kDevice, 0}; }
  c10::Device getDevice() const override { return {kDevice, 0}; }
  void setDevice(c10::Device) const override {}
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device) const override {
    return c10::Stream(c10::Stream::DEFAULT, {kDevice, 0});
  }
  c10::Stream exchangeStream(c10::Stream) const override {
    return c10::Stream(c10::Stream::DEFAULT, {kDevice, 0});
  }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void record(void** event, const c10::Stream&, const c10::DeviceIndex,
              const c10::EventFlag) const override {
    *event = reinterpret_cast<void*>(1);
  }
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
};

struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  at::Device getDeviceFromPtr(void*) const override { return {kDevice, 0}; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();  // random ops run through the CPU fallback
  }
};

Hooks hooks;
const bool hooks_registered = (at::RegisterPrivateUse1HooksInterface(&hooks), true);

constexpr auto kKeys = c10::DispatchKeySet(c10::DispatchKey::PrivateUse1);

at::Tensor empty(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                 std::optional<at::Layout>, std::optional<at::Device>, std::optional<bool>,
                 std::optional<at::MemoryFormat> format) {
  return at::detail::empty_generic(size, &allocator, kKeys, c10::dtype_or_default(dtype), format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                         std::optional<at::ScalarType> dtype, std::optional<at::Layout>,
                         std::optional<at::Device>, std::optional<bool>) {
  return at::detail::empty_strided_generic(size, stride, &allocator, kKeys,
                                           c10::dtype_or_default(dtype));
}

// A CPU tensor on the same memory.
at::Tensor on_host(const at::Tensor& t) {
  if (t.is_cpu()) return t;
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options().device(at::kCPU));
}

at::Tensor on_host(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? on_host(*t) : at::Tensor();
}

at::Tensor to_device(const at::Tensor& t) { return t.defined() ? t.to({kDevice, 0}) : t; }

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool) {
  on_host(dst).copy_(on_host(self));
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  at::native::resize_(dst, self.sizes());
  return copy_from(self, dst, false);
}

void record_stream(at::Tensor&, c10::Stream) {}

// Convolutions of a backend outside ATen's own go through these two.
at::Tensor convolution(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, bool transposed,
                       c10::SymIntArrayRef output_padding, c10::SymInt groups) {
  return to_device(at::convolution_symint(on_host(input), on_host(weight), on_host(bias), stride,
                                          padding, dilation, transposed, output_padding,
                                          std::move(groups)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convolution_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
    bool transposed, c10::SymIntArrayRef output_padding, c10::SymInt groups,
    std::array<bool, 3> mask) {
  const c10::SymInt channels = weight.sym_size(transposed ? 1 : 0) * (transposed ? groups : 1);
  const std::vector<c10::SymInt> bias_sizes{channels};
  auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
      on_host(grad), on_host(input), on_host(weight), c10::SymIntArrayRef(bias_sizes), stride,
      padding, dilation, transposed, output_padding, std::move(groups), mask);
  return {to_device(grad_input), to_device(grad_weight), to_device(grad_bias)};
}

void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  at::native::cpu_fallback(op, stack, /*error_on_views=*/true);
}

}  // namespace

REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &allocator);
C10_REGISTER_GUARD_IMPL(PrivateUse1, Guard);

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", empty);
  m.impl("empty_strided", empty_strided);
  m.impl("as_strided", at::native::as_strided_tensorimpl);
  m.impl("view", at::native::view);
  m.impl("_reshape_alias", at::native::_reshape_alias);
  m.impl("resize_", at::native::resize_);
  m.impl("set_.source_Storage_storage_offset", at::native::set_storage_cpu_);
  m.impl("_copy_from", copy_from);
  m.impl("_copy_from_and_resize", copy_from_and_resize);
  m.impl("record_stream", record_stream);
  m.impl("convolution_overrideable", convolution);
  m.impl("convolution_backward_overrideable", convolution_backward);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
}
