// Elementwise (with Python scalars on either side), reductions, shape ops, matmul.
#include "bindings.h"

namespace eformer::python {
namespace {

bool is_number(const py::handle& h) { return py::isinstance<py::float_>(h) || py::isinstance<py::int_>(h); }

// a op b where either side may be a Python number.
template <class TT, class TS, class ST>
Tensor binary(const py::object& a, const py::object& b, TT tensor_tensor, TS tensor_scalar, ST scalar_tensor) {
  if (is_number(b)) return tensor_scalar(a.cast<Tensor>(), b.cast<float>());
  if (is_number(a)) return scalar_tensor(a.cast<float>(), b.cast<Tensor>());
  return tensor_tensor(a.cast<Tensor>(), b.cast<Tensor>());
}

}  // namespace

void bind_ops_core(py::module_& m) {
  m.def("add", [](py::object a, py::object b) {
    return binary(a, b, [](const Tensor& x, const Tensor& y) { return add(x, y); },
                  [](const Tensor& x, float s) { return add_scalar(x, s); },
                  [](float s, const Tensor& y) { return add_scalar(y, s); });
  }, py::arg("input"), py::arg("other"));
  m.def("sub", [](py::object a, py::object b) {
    return binary(a, b, [](const Tensor& x, const Tensor& y) { return sub(x, y); },
                  [](const Tensor& x, float s) { return add_scalar(x, -s); },
                  [](float s, const Tensor& y) { return rsub_scalar(y, s); });
  }, py::arg("input"), py::arg("other"));
  m.def("mul", [](py::object a, py::object b) {
    return binary(a, b, [](const Tensor& x, const Tensor& y) { return mul(x, y); },
                  [](const Tensor& x, float s) { return mul_scalar(x, s); },
                  [](float s, const Tensor& y) { return mul_scalar(y, s); });
  }, py::arg("input"), py::arg("other"));
  m.def("div", [](py::object a, py::object b) {
    return binary(a, b, [](const Tensor& x, const Tensor& y) { return div(x, y); },
                  [](const Tensor& x, float s) { return mul_scalar(x, 1.0f / s); },
                  [](float s, const Tensor& y) { return rdiv_scalar(y, s); });
  }, py::arg("input"), py::arg("other"));
  m.def("neg", &neg, py::arg("input"));
  m.def("pow", [](const Tensor& x, float p) { return pow_scalar(x, p); }, py::arg("input"), py::arg("exponent"));

  m.def("sum", [](const Tensor& x, py::object dim, bool keepdim) { return sum(x, dims_arg(dim, x.dim()), keepdim); },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false);
  m.def("mean", [](const Tensor& x, py::object dim, bool keepdim) { return mean(x, dims_arg(dim, x.dim()), keepdim); },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false);
  m.def("max", [](const Tensor& x, int64_t dim, bool keepdim) { return max(x, dim, keepdim); }, py::arg("input"),
        py::arg("dim"), py::arg("keepdim") = false, "Values and indices of the maximum along dim.");

  m.def("matmul", &matmul, py::arg("input"), py::arg("other"), py::arg("transpose_a") = false,
        py::arg("transpose_b") = false);
  m.def("bmm", &bmm, py::arg("input"), py::arg("mat2"), py::arg("transpose_a") = false,
        py::arg("transpose_b") = false);

  m.def("reshape", [](const Tensor& x, const Shape& shape) { return reshape(x, shape); }, py::arg("input"),
        py::arg("shape"));
  m.def("flatten", &flatten, py::arg("input"), py::arg("start_dim") = 0, py::arg("end_dim") = -1);
  m.def("transpose", &transpose, py::arg("input"), py::arg("dim0"), py::arg("dim1"));
  m.def("permute", &permute, py::arg("input"), py::arg("dims"));
  m.def("contiguous", &contiguous, py::arg("input"));
  m.def("expand", [](const Tensor& x, const Shape& shape) { return expand(x, shape); }, py::arg("input"),
        py::arg("size"));
  m.def("unsqueeze", &unsqueeze, py::arg("input"), py::arg("dim"));
  m.def("squeeze", &squeeze, py::arg("input"), py::arg("dim"));
  m.def("narrow", &narrow, py::arg("input"), py::arg("dim"), py::arg("start"), py::arg("length"));
  m.def("slice", &slice, py::arg("input"), py::arg("dim"), py::arg("start"), py::arg("end"), py::arg("step") = 1);
  m.def("cat", &cat, py::arg("tensors"), py::arg("dim") = 0);
  m.def("split", [](const Tensor& x, py::object sizes, int64_t dim) {
    if (py::isinstance<py::int_>(sizes)) return split(x, sizes.cast<int64_t>(), dim);
    return split(x, sizes.cast<std::vector<int64_t>>(), dim);
  }, py::arg("tensor"), py::arg("split_size_or_sections"), py::arg("dim") = 0);
}

}  // namespace eformer::python
