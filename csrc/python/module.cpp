// The Python module trp_kernels._C: importing it loads this shared library, which registers the
// trp ops (csrc/ops.cpp and the backends). Its one function is the direct call of
// trp::lowrank_conv2d that trp_kernels.ops.conv.lowrank_conv2d makes on every eager call.
//
// Why a function of our own: a call through torch.ops.trp.lowrank_conv2d matches its Python
// arguments against the schema in Python and C++, which costs as much as one small convolution
// (docs/cuda_conv.md, "Host cost per call"). This function takes only the plain form of the
// arguments -- tensors with no __torch_function__ override, stride/padding/dilation as ints or
// pairs of ints, the scheme as a str, every tensor on x's device -- and calls the op through
// the C++ dispatcher, so autograd, tracing, fake tensors and dispatch modes see exactly the op
// call torch.ops makes. Anything else returns NotImplemented, and the Python wrapper takes the
// torch.ops path, which checks the arguments and names the bad one.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <optional>

namespace trp::python {
namespace {

using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, c10::IntArrayRef,
                                 c10::IntArrayRef, c10::IntArrayRef, c10::string_view);

// torch._C._disabled_torch_function_impl: the __torch_function__ of tensor subclasses that do
// not override (nn.Parameter); set when the module is created.
PyObject* disabled_torch_function = nullptr;
PyObject* torch_function_name = nullptr;

// A tensor whose calls need no __torch_function__ handling: torch.Tensor itself, or a subclass
// that disables it. nullptr for anything else.
const at::Tensor* plain_tensor(PyObject* obj) {
  if (!THPVariable_Check(obj)) return nullptr;
  if (!THPVariable_CheckExact(obj)) {
    PyObject* handler = PyObject_GetAttr(reinterpret_cast<PyObject*>(Py_TYPE(obj)),
                                         torch_function_name);
    if (handler == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
    const bool disabled = handler == disabled_torch_function;
    Py_DECREF(handler);
    if (!disabled) return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

// An int (not a bool), or a tuple or list of two of them, as a pair; false for anything else.
bool plain_int(PyObject* obj, int64_t& value) {
  if (!PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  value = PyLong_AsLongLongAndOverflow(obj, &overflow);
  return overflow == 0 && !(value == -1 && PyErr_Occurred());
}

bool plain_pair(PyObject* obj, std::array<int64_t, 2>& pair) {
  if (PyLong_CheckExact(obj)) {
    if (!plain_int(obj, pair[0])) return false;
    pair[1] = pair[0];
    return true;
  }
  if ((PyTuple_CheckExact(obj) || PyList_CheckExact(obj)) && PySequence_Fast_GET_SIZE(obj) == 2) {
    PyObject** items = PySequence_Fast_ITEMS(obj);
    return plain_int(items[0], pair[0]) && plain_int(items[1], pair[1]);
  }
  return false;
}

// Releases the GIL for the op's run, as torch's own bindings do.
class WithoutGil {
 public:
  WithoutGil() : state_(PyEval_SaveThread()) {}
  ~WithoutGil() { PyEval_RestoreThread(state_); }
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;

 private:
  PyThreadState* state_;
};

// lowrank_conv2d(x, weight1, weight2, bias, stride, padding, dilation, scheme), all positional.
PyObject* lowrank_conv2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor* x = plain_tensor(args[0]);
  const at::Tensor* weight1 = plain_tensor(args[1]);
  const at::Tensor* weight2 = plain_tensor(args[2]);
  if (x == nullptr || weight1 == nullptr || weight2 == nullptr) Py_RETURN_NOTIMPLEMENTED;
  std::optional<at::Tensor> bias;
  if (args[3] != Py_None) {
    const at::Tensor* b = plain_tensor(args[3]);
    if (b == nullptr) Py_RETURN_NOTIMPLEMENTED;
    bias = *b;
  }
  std::array<int64_t, 2> stride{}, padding{}, dilation{};
  if (!plain_pair(args[4], stride) || !plain_pair(args[5], padding) ||
      !plain_pair(args[6], dilation) || !PyUnicode_CheckExact(args[7])) {
    PyErr_Clear();  // an int too large for int64: the checked path reports it
    Py_RETURN_NOTIMPLEMENTED;
  }
  // Tensors on several devices: the checked path names the odd one out before dispatch.
  const c10::Device device = x->device();
  if (weight1->device() != device || weight2->device() != device ||
      (bias.has_value() && bias->device() != device)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  Py_ssize_t length = 0;
  const char* scheme = PyUnicode_AsUTF8AndSize(args[7], &length);
  if (scheme == nullptr) return nullptr;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp::lowrank_conv2d", "")
                             .typed<ConvSignature>();
  at::Tensor y;
  {
    const WithoutGil released;
    y = op.call(*x, *weight1, *weight2, bias, stride, padding, dilation,
                c10::string_view(scheme, static_cast<std::size_t>(length)));
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"lowrank_conv2d", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&lowrank_conv2d)),
     METH_FASTCALL,
     "trp::lowrank_conv2d(x, weight1, weight2, bias, stride, padding, dilation, scheme) for "
     "plain arguments, else NotImplemented"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace
}  // namespace trp::python

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  using namespace trp::python;
  PyObject* torch_c = PyImport_ImportModule("torch._C");
  if (torch_c == nullptr) return nullptr;
  disabled_torch_function = PyObject_GetAttrString(torch_c, "_disabled_torch_function_impl");
  Py_DECREF(torch_c);
  torch_function_name = PyUnicode_InternFromString("__torch_function__");
  if (disabled_torch_function == nullptr || torch_function_name == nullptr) return nullptr;
  return PyModule_Create(&module_def);
}
}
