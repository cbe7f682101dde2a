// Activations, softmax, layer norm, dropout and losses, with torch's names and arguments.
#include "bindings.h"

namespace eformer::python {

void bind_ops_math(py::module_& m) {
  m.def(
      "exp", [](const Tensor& x) { return exp(x); }, py::arg("input"));
  m.def(
      "log", [](const Tensor& x) { return log(x); }, py::arg("input"));
  m.def(
      "sqrt", [](const Tensor& x) { return sqrt(x); }, py::arg("input"));
  m.def(
      "tanh", [](const Tensor& x) { return tanh(x); }, py::arg("input"));
  m.def("sigmoid", &sigmoid, py::arg("input"));
  m.def("relu", &relu, py::arg("input"));
  m.def(
      "gelu",
      [](const Tensor& x, const std::string& approximate) {
        EF_CHECK(approximate == "none" || approximate == "tanh", ValueError, "gelu: approximate = '",
                 approximate, "'; expected 'none' or 'tanh'");
        return gelu(x, approximate == "tanh");
      },
      py::arg("input"), py::arg("approximate") = "none");
  m.def("elu", &elu, py::arg("input"), py::arg("alpha") = 1.0f);
  m.def("softplus", &softplus, py::arg("input"), py::arg("beta") = 1.0f, py::arg("threshold") = 20.0f);

  m.def("softmax", &softmax, py::arg("input"), py::arg("dim"));
  m.def("log_softmax", &log_softmax, py::arg("input"), py::arg("dim"));

  m.def(
      "layer_norm",
      [](const Tensor& x, const py::object& normalized_shape, std::optional<Tensor> weight,
         std::optional<Tensor> bias, float eps) {
        Shape shape = py::isinstance<py::int_>(normalized_shape) ? Shape{normalized_shape.cast<int64_t>()}
                                                                 : normalized_shape.cast<Shape>();
        return layer_norm(x, shape, weight.value_or(Tensor()), bias.value_or(Tensor()), eps);
      },
      py::arg("input"), py::arg("normalized_shape"), py::arg("weight") = py::none(),
      py::arg("bias") = py::none(), py::arg("eps") = 1e-5f);

  m.def("dropout", &dropout, py::arg("input"), py::arg("p") = 0.5f, py::arg("training") = true,
        "Zeroes elements with probability p (mask from the seeded default generator) and scales the rest by "
        "1/(1-p).");

  m.def(
      "cross_entropy",
      [](const Tensor& input, const Tensor& target, int64_t ignore_index, const std::string& reduction) {
        return cross_entropy(input, target, ignore_index, parse_reduction(reduction));
      },
      py::arg("input"), py::arg("target"), py::arg("ignore_index") = -100, py::arg("reduction") = "mean",
      "Fused log_softmax + NLL over input [N, C] and int64 target [N]; mean is over non-ignored targets.");

  m.def(
      "linear_cross_entropy",
      [](const Tensor& h, const Tensor& weight, const Tensor& target, int64_t ignore_index,
         const std::string& reduction, int64_t chunk_rows) {
        return linear_cross_entropy(h, weight, target, ignore_index, parse_reduction(reduction), chunk_rows);
      },
      py::arg("h"), py::arg("weight"), py::arg("target"), py::arg("ignore_index") = -100,
      py::arg("reduction") = "mean", py::arg("chunk_rows") = 0,
      "cross_entropy(h @ weight.T, target) in row chunks, never materializing the [N, C] logits (the "
      "Reformer's chunked LM head): h [N, D], weight [C, D]; chunk_rows 0 = automatic (16 MiB of logits).");
}

}  // namespace eformer::python
