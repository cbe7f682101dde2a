// eformer.attention(q, k, v, kind="flash", causal=False, key_mask=None, scale=None, dropout=0,
// **options), attention_kinds(), attention_pattern(), mechanisms() (the registry),
// kernelized_attention (the kernelized core) and draw_omega.
#include <algorithm>
#include <cmath>

#include "bindings.h"
#include "eformer/attention/kernels/feature_maps.h"
#include "eformer/attention/functional.h"
#include "eformer/attention/registry.h"
#include "eformer/attention/relative.h"
#include "eformer/ops/relative_shift.h"
#include "eformer/attention/kernels/kernelized.h"
#include "eformer/attention/kernels/narrow_attention.h"
#include "eformer/attention/mechanisms/sparse.h"

namespace eformer::python {

namespace {

// **options of the Python calls: tensors go to args.tensors, None means "not given", everything
// else goes to the JSON options.
attention::MechanismArgs mechanism_args(const py::kwargs& kwargs) {
  attention::MechanismArgs args;
  py::dict rest;
  for (auto item : kwargs) {
    const std::string key = item.first.cast<std::string>();
    if (item.second.is_none()) continue;  // an option left at its default
    if (py::isinstance<Tensor>(item.second))
      args.tensors[key] = item.second.cast<Tensor>();
    else
      rest[item.first] = item.second;
  }
  args.options = to_json_value(rest);
  return args;
}

py::dict capabilities_dict(const attention::Capabilities& c) {
  py::dict d;
  for (const auto& [name, on] : attention::capability_flags(c)) d[name] = on;
  return d;
}

// The keyword arguments every attention call shares; scale None means 1/sqrt(d).
attention::AttentionOptions attention_options(const char* who, bool causal, const py::object& key_mask,
                                              const py::object& scale, float dropout) {
  attention::AttentionOptions opts;
  opts.causal = causal;
  opts.dropout = dropout;
  if (!key_mask.is_none()) opts.key_mask = key_mask.cast<Tensor>();
  if (!scale.is_none()) {
    opts.scale = scale.cast<float>();
    EF_CHECK(opts.scale != 0.0f, ValueError, who, ": scale = 0; pass None for 1/sqrt(head_dim)");
  }
  return opts;
}

}  // namespace

py::dict capabilities_to_python(const attention::Capabilities& c) { return capabilities_dict(c); }

void bind_attention(py::module_& m) {
  m.def(
      "attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind, bool causal,
         const py::object& key_mask, const py::object& scale, float dropout, const py::kwargs& options) {
        const auto opts = attention_options("attention", causal, key_mask, scale, dropout);
        return attention::attention(q, k, v, kind, opts, mechanism_args(options));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kind") = "flash", py::arg("causal") = false,
      py::arg("key_mask") = py::none(), py::arg("scale") = py::none(), py::arg("dropout") = 0.0f,
      "Attention on q [B, H, N, d], k and v [B, H, M, d] by `kind` (eformer.attention_kinds()).\n"
      "causal: query i sees key j iff j <= i + M - N (bottom-right aligned; the kernelized kinds need N == M).\n"
      "key_mask: bool [B, M], True = a real token. scale: None for 1/sqrt(d). dropout: on the attention\n"
      "probabilities (kinds that have them), drawn from the default generator. A query with no attendable key\n"
      "outputs 0 (zero gradients). **options: the mechanism's own options (eformer.mechanisms() lists them);\n"
      "tensors among them are tensor arguments (performer: omega [m, d]).");
  m.def(
      "narrow_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, bool causal, const py::object& key_mask,
         const py::object& scale, float dropout) {
        return attention::narrow_attention(q, k, v,
                                           attention_options("narrow_attention", causal, key_mask, scale, dropout));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = false, py::arg("key_mask") = py::none(),
      py::arg("scale") = py::none(), py::arg("dropout") = 0.0f,
      "Exact attention when one side is short (min(N, M) <= 512: Linformer's k rows, ISAB's inducing points):\n"
      "the N x M probabilities by whole GEMMs, kept for the backward; beyond that, flash. Arguments as attention's.");
  m.def(
      "relative_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& r, const Tensor& u, const Tensor& w,
         const py::object& scale, float dropout) {
        float s = scale.is_none() ? float(1.0 / std::sqrt(double(q.dim() == 4 ? q.size(3) : 1))) : scale.cast<float>();
        return attention::relative_attention(q, k, v, r, u, w, s, dropout);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("r"), py::arg("u"), py::arg("w"),
      py::arg("scale") = py::none(), py::arg("dropout") = 0.0f,
      "Transformer-XL attention (Dai et al. 2019, sec. 3.3), causal: q [B, H, N, d] (the last N of the K keys),\n"
      "k, v [B, H, K, d], r [H, K, d] the projected encodings of the distances K-1 .. 0, u, w [H, d] the content and\n"
      "position biases; scores (q_i + u).k_j + (q_i + w).r_{i-j}, fused into the tiled kernel (no N x K scores).\n"
      "-> [B, H, N, d].");
  m.def("relative_encodings", &attention::relative_encodings, py::arg("K"), py::arg("D"),
        "Sinusoidal encodings [K, D] of the distances K-1, ..., 0 (sin in the first D/2 columns, cos in the rest).");
  m.def("relative_shift", &relative_shift, py::arg("x"),
        "x [..., N, K] -> out[..., i, j] = x[..., i, j + N - 1 - i] for j <= K - N + i, else -inf.");
  m.def("attention_kinds", &attention::attention_kinds,
        "The names eformer.attention accepts as kind (registered mechanisms with a functional form).");
  m.def(
      "attention_pattern",
      [](const std::string& kind, int64_t n, const py::object& m_keys, int64_t heads, bool causal, uint64_t seed,
         const py::kwargs& options) {
        const int64_t M = m_keys.is_none() ? n : m_keys.cast<int64_t>();
        Tensor p = attention::attention_pattern(kind, n, M, heads, causal, mechanism_args(options), seed);
        return py::cast(p).attr("numpy")();
      },
      py::arg("kind"), py::arg("n"), py::arg("m") = py::none(), py::arg("heads") = 1, py::arg("causal") = false,
      py::arg("seed") = 0,
      "The exact attention pattern of a pattern-based kind as a numpy bool array [heads, n, m]: True where\n"
      "query i may attend key j (before any key mask). ValueError for kinds that are not pattern-based.");
  m.def(
      "attention_layout",
      [](const std::string& kind, int64_t n, const py::object& m_keys, int64_t heads, bool causal, uint64_t seed,
         const py::kwargs& options) {
        const int64_t M = m_keys.is_none() ? n : m_keys.cast<int64_t>();
        py::list out;
        for (const auto& L : attention::sparse_layout_of(kind, n, M, heads, causal, mechanism_args(options), seed)) {
          int64_t tiles = 0;  // block pairs computed over the `heads` heads
          for (int64_t h = 0; h < heads; ++h) {
            const int64_t lh = h % L->heads;
            tiles += L->row_begin(lh + 1, 0) - L->row_begin(lh, 0);
          }
          py::dict d;
          d["block"] = L->block;
          d["rows"] = L->rows;
          d["keys"] = L->keys;
          d["layout_heads"] = L->heads;
          d["pairs"] = tiles;
          d["masked_pairs"] = L->masked_pairs();
          d["allowed_elements"] = L->allowed_elements;
          d["masks"] = int64_t(L->masks.size() / size_t(L->block * L->block));
          out.append(d);
        }
        return out;
      },
      py::arg("kind"), py::arg("n"), py::arg("m") = py::none(), py::arg("heads") = 1, py::arg("causal") = false,
      py::arg("seed") = 0,
      "The block-sparse layouts of a block-sparse kind (one dict per part): block, the part's rows and keys,\n"
      "layout_heads, pairs (block pairs computed over `heads` heads), masked_pairs, allowed_elements, masks.");
  m.def(
      "mechanisms",
      []() {
        py::list out;
        for (const auto& e : attention::mechanisms()) {
          py::dict d;
          d["name"] = e.name;
          d["description"] = e.description;
          d["capabilities"] = capabilities_dict(e.capabilities);
          d["reference"] = e.reference;
          py::list opts;
          for (const auto& o : e.options) {
            py::dict od;
            od["name"] = o.name;
            od["type"] = o.type;
            od["default"] = o.default_value;
            od["help"] = o.help;
            opts.append(od);
          }
          d["options"] = opts;
          d["functional"] = bool(e.functional);
          d["pattern"] = bool(e.pattern);
          out.append(d);
        }
        return out;
      },
      "Every registered mechanism: name, description, capabilities, reference (the float64 formulation the\n"
      "contract tests use), options, and whether it has a functional form and an exact pattern.");
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
