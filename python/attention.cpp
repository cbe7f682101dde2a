// eformer.attention(q, k, v, kind="flash", causal=False, key_mask=None, scale=None, omega=None,
// **feature_options), eformer.kernelized_attention (the kernelized core) and eformer.draw_omega.
#include "bindings.h"
#include "eformer/attention/kernels/feature_maps.h"
#include "eformer/attention/functional.h"
#include "eformer/attention/kernels/kernelized.h"

namespace eformer::python {

void bind_attention(py::module_& m) {
  m.def(
      "attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind, bool causal,
         const py::object& key_mask, const py::object& scale, const py::object& omega, const py::kwargs& options) {
        attention::AttentionOptions opts;
        opts.causal = causal;
        if (!key_mask.is_none()) opts.key_mask = key_mask.cast<Tensor>();
        if (!scale.is_none()) {
          opts.scale = scale.cast<float>();
          EF_CHECK(opts.scale != 0.0f, ValueError, "attention: scale = 0; pass None for 1/sqrt(head_dim)");
        }
        if (!omega.is_none()) opts.omega = omega.cast<Tensor>();
        opts.feature_options = to_json_value(options);
        return attention::attention(q, k, v, kind, opts);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kind") = "flash", py::arg("causal") = false,
      py::arg("key_mask") = py::none(), py::arg("scale") = py::none(), py::arg("omega") = py::none(),
      "Attention on q [B, H, N, d], k and v [B, H, M, d] by `kind` (eformer.attention_kinds()).\n"
      "causal: query i sees key j iff j <= i + M - N (bottom-right aligned; the kernelized kinds need N == M).\n"
      "key_mask: bool [B, M], True = a real token. scale: None for 1/sqrt(d). A query with no attendable key\n"
      "outputs 0 (zero gradients). performer / linear only: omega [m, d] (the random matrix; else a fresh draw\n"
      "from the default generator) and feature options kernel=softmax|gaussian|relu|elu|exp|identity,\n"
      "features=positive|trig, projection=bool, m=int, ortho=bool, norms=chi|fixed.");
  m.def("attention_kinds", &attention::attention_kinds, "The names eformer.attention accepts as kind.");
  m.def(
      "kernelized_attention",
      [](const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, const std::optional<Tensor>& log_scale_k,
         bool causal, const std::optional<Tensor>& key_mask) {
        return attention::kernelized_attention(phi_q, phi_k, v, log_scale_k ? *log_scale_k : Tensor(), causal,
                                               key_mask ? *key_mask : Tensor());
      },
      py::arg("phi_q"), py::arg("phi_k"), py::arg("v"), py::arg("log_scale_k") = py::none(),
      py::arg("causal") = false, py::arg("key_mask") = py::none(),
      "The kernelized core: out_i = sum_j w_ij v_j / sum_j w_ij, w_ij = (phi_q_i . phi_k_j) exp(log_scale_k_j),\n"
      "phi_q [B, H, N, F], phi_k [B, H, M, F], v [B, H, M, dv], log_scale_k [B, H, M].");
  m.def(
      "draw_omega",
      [](int64_t m, int64_t d, bool ortho, const std::string& norms, uint64_t seed, uint64_t stream) {
        EF_CHECK(norms == "chi" || norms == "fixed", ValueError, "draw_omega: norms = '", norms,
                 "'; expected chi or fixed");
        rng::Generator gen(seed, stream);
        return attention::draw_omega(m, d, ortho, norms == "fixed", gen);
      },
      py::arg("m"), py::arg("d"), py::arg("ortho") = true, py::arg("norms") = "chi", py::arg("seed") = 0,
      py::arg("stream") = 0,
      "A random matrix omega [m, d] for the Performer's features: i.i.d. N(0, 1) rows, or (ortho) blocks of d\n"
      "orthogonal rows with chi-distributed (or, norms='fixed', sqrt(d)) norms. A pure function of seed, stream.");
}

}  // namespace eformer::python
