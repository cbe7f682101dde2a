// eformer.attention(q, k, v, kind="flash", causal=False, key_mask=None, scale=None)
#include "bindings.h"
#include "eformer/attention/functional.h"

namespace eformer::python {

void bind_attention(py::module_& m) {
  m.def(
      "attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind, bool causal,
         const py::object& key_mask, const py::object& scale) {
        attention::AttentionOptions opts;
        opts.causal = causal;
        if (!key_mask.is_none()) opts.key_mask = key_mask.cast<Tensor>();
        if (!scale.is_none()) {
          opts.scale = scale.cast<float>();
          EF_CHECK(opts.scale != 0.0f, ValueError, "attention: scale = 0; pass None for 1/sqrt(head_dim)");
        }
        return attention::attention(q, k, v, kind, opts);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kind") = "flash", py::arg("causal") = false,
      py::arg("key_mask") = py::none(), py::arg("scale") = py::none(),
      "Exact (and, by kind, efficient) attention on q [B, H, N, d], k and v [B, H, M, d].\n"
      "causal: query i sees key j iff j <= i + M - N (bottom-right aligned). key_mask: bool [B, M], True =\n"
      "a real token. scale: None for 1/sqrt(d). A query with no attendable key outputs 0 (zero gradients).");
  m.def("attention_kinds", &attention::attention_kinds, "The names eformer.attention accepts as kind.");
}

}  // namespace eformer::python
