// The autograd formula of trp::lowrank_conv2d, registered in C++ for every device (the
// Autograd alias key): the backward is trp::lowrank_conv2d_backward, which recomputes the
// r-channel intermediate rather than keeping it. In C++ rather than Python so that a call costs
// no Python frames, in the forward or in the backward (docs/cuda_conv.md, "Host cost per call").
// The fake (meta) kernels stay in Python (trp_kernels/ops/library.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>

namespace trp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, c10::IntArrayRef,
                                 c10::IntArrayRef, c10::IntArrayRef, c10::string_view);
using ConvBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
    c10::IntArrayRef, c10::IntArrayRef, c10::string_view, std::array<bool, 4>);

// The ops' handles, looked up once (a schema lookup by name takes a lock and a hash).
const c10::TypedOperatorHandle<ConvSignature>& conv_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp::lowrank_conv2d", "")
                             .typed<ConvSignature>();
  return op;
}

const c10::TypedOperatorHandle<ConvBackwardSignature>& conv_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp::lowrank_conv2d_backward", "")
                             .typed<ConvBackwardSignature>();
  return op;
}

// The forward below autograd: the backend kernel (or the fake one under tracing).
at::Tensor below_autograd(const at::Tensor& x, const at::Tensor& weight1,
                          const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                          c10::IntArrayRef stride, c10::IntArrayRef padding,
                          c10::IntArrayRef dilation, c10::string_view scheme) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  return conv_op().call(x, weight1, weight2, bias, stride, padding, dilation, scheme);
}

class LowRankConv2dFunction : public torch::autograd::Function<LowRankConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight1,
                            const at::Tensor& weight2, const std::optional<at::Tensor>& bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, c10::string_view scheme) {
    ctx->save_for_backward({x, weight1, weight2});
    // One saved entry per kind of value: each is a string-keyed map insertion.
    ctx->saved_data["geometry"] = std::vector<int64_t>{
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        bias.has_value() && bias->defined()};
    ctx->saved_data["scheme"] = std::string(scheme);
    return below_autograd(x, weight1, weight2, bias, stride, padding, dilation, scheme);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(8);  // one per forward argument; the non-tensor ones get none
    const at::Tensor& grad_out = grad_outputs[0];
    if (!grad_out.defined()) return grads;
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> g = ctx->saved_data["geometry"].toIntVector();
    const c10::IntArrayRef stride(g.data(), 2), padding(g.data() + 2, 2), dilation(g.data() + 4, 2);
    // needs_input_grad counts the tensor inputs only: x, weight1, weight2[, bias].
    const std::array<bool, 4> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->needs_input_grad(2),
                                   g[6] != 0 && ctx->needs_input_grad(3)};
    const auto call = [&] {
      return conv_backward_op().call(grad_out, saved[0], saved[1], saved[2], stride, padding,
                                     dilation, ctx->saved_data["scheme"].toStringRef(), mask);
    };
    // Without create_graph, nothing of the backward is differentiated: its ATen calls skip
    // autograd. With it, the call goes through autograd, whose fallback warns that this
    // backward has no derivative of its own (none is registered).
    auto [grad_x, grad_w1, grad_w2, grad_bias] = [&] {
      if (at::GradMode::is_enabled()) return call();
      const at::AutoDispatchBelowADInplaceOrView guard;
      return call();
    }();
    // An unselected gradient comes back as an empty tensor: none for autograd.
    if (mask[0]) grads[0] = std::move(grad_x);
    if (mask[1]) grads[1] = std::move(grad_w1);
    if (mask[2]) grads[2] = std::move(grad_w2);
    if (mask[3]) grads[3] = std::move(grad_bias);
    return grads;
  }
};

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

at::Tensor lowrank_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight1,
                                   const at::Tensor& weight2,
                                   const std::optional<at::Tensor>& bias,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation, c10::string_view scheme) {
  const bool graph = at::GradMode::is_enabled() &&
                     (requires_grad(x) || requires_grad(weight1) || requires_grad(weight2) ||
                      (bias.has_value() && requires_grad(*bias)));
  // Nothing to differentiate (inference, no_grad): no graph node, straight to the kernel.
  if (!graph) return below_autograd(x, weight1, weight2, bias, stride, padding, dilation, scheme);
  return LowRankConv2dFunction::apply(x, weight1, weight2, bias, stride, padding, dilation,
                                      scheme);
}

}  // namespace

TORCH_LIBRARY_IMPL(trp, Autograd, m) {
  m.impl("lowrank_conv2d", &lowrank_conv2d_autograd);
}

}  // namespace trp
