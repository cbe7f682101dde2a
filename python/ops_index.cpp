// Selection, cumulative sums, gather/scatter/sort, depthwise conv1d and embedding, with torch's
// names and argument names.
#include "bindings.h"

namespace eformer::python {
namespace {

// A tensor argument that may also be a Python number (torch.where accepts scalars).
Tensor tensor_or_scalar(const py::object& v) {
  if (py::isinstance<py::float_>(v) || py::isinstance<py::int_>(v)) return Tensor::scalar(v.cast<float>());
  return v.cast<Tensor>();
}

}  // namespace

void bind_ops_index(py::module_& m) {
  m.def("masked_fill", &masked_fill, py::arg("input"), py::arg("mask"), py::arg("value"),
        "input with `value` where the bool mask (broadcast to input) is true.");
  m.def(
      "where",
      [](const Tensor& cond, py::object a, py::object b) {
        return where(cond, tensor_or_scalar(a), tensor_or_scalar(b));
      },
      py::arg("condition"), py::arg("input"), py::arg("other"),
      "condition ? input : other, broadcast together.");

  m.def("cumsum", &cumsum, py::arg("input"), py::arg("dim"), py::arg("reverse") = false,
        "Cumulative sum along dim; reverse=True sums from the end (suffix sums).");
  m.def("logcumsumexp", &logcumsumexp, py::arg("input"), py::arg("dim"),
        "log(cumsum(exp(input))) along dim, with a running maximum (finite for any finite input).");

  m.def("gather", &gather, py::arg("input"), py::arg("dim"), py::arg("index"));
  m.def("scatter_add", &scatter_add, py::arg("input"), py::arg("dim"), py::arg("index"), py::arg("src"));
  m.def(
      "argsort",
      [](const Tensor& x, int64_t dim, bool descending, bool stable) {
        (void)stable;  // always stable
        return argsort(x, dim, descending);
      },
      py::arg("input"), py::arg("dim") = -1, py::arg("descending") = false, py::arg("stable") = true,
      "Int64 indices that sort input along dim; always stable.");

  m.def(
      "depthwise_conv1d",
      [](const Tensor& x, const Tensor& weight, std::optional<Tensor> bias, bool causal) {
        return depthwise_conv1d(x, weight, bias ? *bias : Tensor(), causal);
      },
      py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("causal") = false,
      "input [B, N, C], weight [C, K], bias [C] -> [B, N, C]; causal pads K-1 on the left, else "
      "(K-1)//2 on the left and the rest on the right (torch padding='same').");

  m.def("embedding", &embedding, py::arg("input"), py::arg("weight"),
        "Rows of weight [V, D] picked by int64 ids [...] -> [..., D].");
}

}  // namespace eformer::python
