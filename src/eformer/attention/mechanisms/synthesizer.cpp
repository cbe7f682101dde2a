#include "eformer/attention/mechanisms/synthesizer.h"

#include <algorithm>
#include <cmath>

#include "eformer/attention/kernels/per_head_matmul.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/dropout.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/select.h"
#include "eformer/ops/shape.h"
#include "eformer/ops/softmax.h"

namespace eformer::attention {
namespace {

const char* const kWho = "attention 'synthesizer'";
const std::vector<std::pair<Synthesis, std::string>> kSynthesisNames = {
    {Synthesis::Dense, "dense"},
    {Synthesis::Random, "random"},
    {Synthesis::FactorizedDense, "factorized_dense"},
    {Synthesis::FactorizedRandom, "factorized_random"},
    {Synthesis::DotProduct, "dot_product"}};

std::vector<OptionSpec> synthesizer_option_specs() {
  std::vector<OptionSpec> specs = {
      {"synthesis", "string", "dense",
       "components joined by '+': dense | random | factorized_dense | factorized_random | dot_product"},
      {"trainable", "bool", "true", "random matrices are learned (false: fixed, drawn at init)"},
      {"rank", "int", "8", "factorized_random: R = R1 R2^T of this rank"},
      {"factor", "int", "0", "factorized_dense: a, with a b = max_len (0: the divisor nearest sqrt(max_len))"}};
  for (auto& s : multi_head_option_specs()) specs.push_back(s);
  return specs;
}

std::vector<Synthesis> parse_synthesis(const nlohmann::json& value) {
  std::string valid;
  for (const auto& [s, name] : kSynthesisNames) valid += (valid.empty() ? "" : " | ") + name;
  EF_CHECK(value.is_string(), ValueError, kWho, ": option synthesis = ", value.dump(),
           "; expected a string of components joined by '+': ", valid);
  std::vector<Synthesis> parts;
  const std::string text = value.get<std::string>();
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find('+', at), text.size());
    const std::string part = text.substr(at, end - at);
    const auto it = std::find_if(kSynthesisNames.begin(), kSynthesisNames.end(),
                                 [&](const auto& n) { return n.second == part; });
    EF_CHECK(it != kSynthesisNames.end(), ValueError, kWho, ": option synthesis = ", value.dump(),
             ": unknown component '", part, "'; expected components joined by '+': ", valid);
    EF_CHECK(std::find(parts.begin(), parts.end(), it->first) == parts.end(), ValueError, kWho,
             ": option synthesis = ", value.dump(), " names '", part, "' twice");
    parts.push_back(it->first);
    at = end + 1;
  }
  return parts;
}

bool uses(const std::vector<Synthesis>& parts, Synthesis s) {
  return std::find(parts.begin(), parts.end(), s) != parts.end();
}

const Tensor& weight(const MechanismArgs& args, const std::string& name) {
  const auto it = args.tensors.find(name);
  EF_CHECK(it != args.tensors.end(), ValueError, kWho, ": needs the tensor argument '", name, "'");
  return it->second;
}

// t must be float32 with these sizes: n > 0 exactly n, n < 0 at least -n.
void expect(const MechanismArgs& args, const std::string& name, std::vector<int64_t> sizes) {
  const Tensor& t = weight(args, name);
  bool ok = t.dtype() == DType::Float32 && t.dim() == int64_t(sizes.size());
  std::string want;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t s = sizes[i];
    ok = ok && (s > 0 ? t.size(int64_t(i)) == s : t.size(int64_t(i)) >= -s);
    want += (i ? ", " : "") + (s > 0 ? std::to_string(s) : ">= " + std::to_string(-s));
  }
  EF_CHECK(ok, ShapeError, kWho, ": ", name, " is ", t.describe(), "; expected float32 [", want, "]");
}

// The shapes of every tensor `parts` needs, for H heads of width d over N positions.
void check_weights(const std::vector<Synthesis>& parts, const MechanismArgs& args, int64_t H, int64_t d,
                   int64_t N, int64_t factor) {
  for (const char* prefix : {"dense", "fdense"}) {
    const bool factorized = prefix[0] == 'f';
    if (!uses(parts, factorized ? Synthesis::FactorizedDense : Synthesis::Dense)) continue;
    const std::string p = prefix;
    expect(args, p + "_w1", {H, d, -1});
    const int64_t hidden = weight(args, p + "_w1").size(2);
    expect(args, p + "_b1", {H, hidden});
    expect(args, p + "_w2", {H, hidden, factorized ? -2 : -N});
    const int64_t width = weight(args, p + "_w2").size(2);
    expect(args, p + "_b2", {H, width});
    if (factorized)
      EF_CHECK(factor >= 1 && factor < width && factor * (width - factor) >= N, ValueError, kWho,
               ": factorized_dense with factor a = ", factor, " and fdense_w2 of width a + b = ", width,
               "; expected 1 <= a < ", width, " and a b >= ", N, " (the sequence length)");
  }
  if (uses(parts, Synthesis::Random)) expect(args, "random", {H, -N, -N});
  if (uses(parts, Synthesis::FactorizedRandom)) {
    expect(args, "random_u", {H, -N, -1});
    expect(args, "random_v", {H, -N, weight(args, "random_u").size(2)});
  }
  if (args.tensors.count("mix")) expect(args, "mix", {H, int64_t(parts.size())});
}

// The two-layer MLP of the dense synthesizers on q [B, H, T, d]: relu(q W1 + b1) W2 + b2 -> [B, H, T, width].
Tensor dense_mlp(const MechanismArgs& w, const std::string& p, const Tensor& q, int64_t width) {
  const int64_t H = q.size(1);
  const Tensor& w1 = weight(w, p + "_w1");
  const Tensor hidden = relu(add(per_head_right(q, w1), reshape(weight(w, p + "_b1"), {1, H, 1, w1.size(2)})));
  return add(per_head_right(hidden, slice(weight(w, p + "_w2"), 2, 0, width)),
             reshape(slice(weight(w, p + "_b2"), 1, 0, width), {1, H, 1, width}));
}

// One component's logits for query rows offset .. offset + T (q [B, H, T, d], undefined when no component
// reads it) over keys 0 .. M - 1: [B or 1, H, T, M].
Tensor component_logits(Synthesis s, const MechanismArgs& w, int64_t factor, const Tensor& q, const Tensor& k,
                        int64_t offset, int64_t T, int64_t M, float scale) {
  switch (s) {
    case Synthesis::Dense:
      return dense_mlp(w, "dense", q, M);
    case Synthesis::FactorizedDense: {
      // S_i[x b + y] = A_i[x] B_i[y]: the outer product of the two MLP heads, flattened, first M used.
      const int64_t width = weight(w, "fdense_w2").size(2), a = factor, b = width - a;
      const Tensor ab = dense_mlp(w, "fdense", q, width);
      const Tensor outer = mul(unsqueeze(slice(ab, 3, 0, a), 4), unsqueeze(slice(ab, 3, a, width), 3));
      return slice(reshape(outer, {q.size(0), q.size(1), T, a * b}), 3, 0, M);
    }
    case Synthesis::Random:
      return unsqueeze(slice(slice(weight(w, "random"), 1, offset, offset + T), 2, 0, M), 0);
    case Synthesis::FactorizedRandom:
      return unsqueeze(bmm(slice(weight(w, "random_u"), 1, offset, offset + T),
                           slice(weight(w, "random_v"), 1, 0, M), false, true),
                       0);
    case Synthesis::DotProduct:
      return mul_scalar(matmul(q, k, false, true), scale);
  }
  return Tensor();
}

// Y = softmax(sum_c alpha_c S_c + mask) V for query rows offset .. offset + T over the M keys of v
// (Synthesizer sec. 3.3). q [B, H, T, d] (undefined when no component reads it), k, v [B, H, M, d]; the T
// queries are the last T positions (T = M - offset).
Tensor synthesized_attention(const std::vector<Synthesis>& parts, const MechanismArgs& w, int64_t factor,
                             const Tensor& q, const Tensor& k, const Tensor& v, int64_t offset,
                             const AttentionOptions& opts, float scale) {
  const int64_t B = v.size(0), H = v.size(1), M = v.size(2), T = M - offset;
  const auto mix = w.tensors.find("mix");
  const Tensor alpha = mix == w.tensors.end() ? Tensor() : softmax(mix->second, 1);  // [H, C]
  Tensor logits;
  for (size_t c = 0; c < parts.size(); ++c) {
    Tensor s = component_logits(parts[c], w, factor, q, k, offset, T, M, scale);
    if (parts.size() > 1)
      s = alpha.defined() ? mul(s, reshape(slice(alpha, 1, int64_t(c), int64_t(c) + 1), {1, H, 1, 1}))
                          : mul_scalar(s, 1.0f / float(parts.size()));
    logits = logits.defined() ? add(logits, s) : s;
  }
  if (logits.size(0) != B) logits = expand(logits, {B, H, T, M});
  // Blocked: a key after the query (causal; query row t is position offset + t) or a padded one.
  Tensor blocked = Tensor::zeros({B, 1, T, M}, DType::Bool);
  bool any_blocked = false, row_without_key = false;
  {
    bool* out = blocked.data<bool>();
    const Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        bool any_key = false;
        for (int64_t j = 0; j < M; ++j) {
          const bool off = (opts.causal && j > offset + t) || (km.defined() && !km.data<bool>()[b * M + j]);
          out[(b * T + t) * M + j] = off;
          any_blocked |= off, any_key |= !off;
        }
        row_without_key |= !any_key;
      }
  }
  if (any_blocked) logits = masked_fill(logits, blocked, -1e30f);
  Tensor p = softmax(logits, 3);
  if (row_without_key) {  // a query with no key to attend gives 0 (as the exact kernels)
    Tensor has_key = Tensor::empty({B, 1, T, 1});
    for (int64_t bt = 0; bt < B * T; ++bt) {
      bool any = false;
      for (int64_t j = 0; j < M; ++j) any |= !blocked.data<bool>()[bt * M + j];
      has_key.data<float>()[bt] = any ? 1.0f : 0.0f;
    }
    p = mul(p, has_key);
  }
  if (opts.dropout > 0.0f) p = dropout(p, opts.dropout, true);
  return matmul(p, v);
}

int64_t default_factor(int64_t L) {
  int64_t a = 1;
  for (int64_t f = 1; f * f <= L; ++f)
    if (L % f == 0) a = f;
  return a;
}

}  // namespace

SynthesizerOptions parse_synthesizer_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  SynthesizerOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_multi_head_option(kWho, key, value, o.multi_head)) continue;
    if (key == "synthesis")
      o.synthesis = parse_synthesis(value);
    else if (key == "trainable")
      o.trainable = options::get_bool(kWho, key, value);
    else if (key == "rank")
      o.rank = options::get_int(kWho, key, value, 1, 65536);
    else if (key == "factor")
      o.factor = options::get_int(kWho, key, value, 0, 65536);
    else
      options::unknown(kWho, key, synthesizer_option_specs());
  }
  return o;
}

Tensor synthesizer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                             const MechanismArgs& args) {
  std::vector<Synthesis> parts = {Synthesis::Dense};
  int64_t factor = 0;
  for (const auto& [key, value] : args.options.items()) {
    if (key == "synthesis")
      parts = parse_synthesis(value);
    else if (key == "factor")
      factor = options::get_int(kWho, key, value, 1, 65536);
    else
      options::unknown(kWho, key, {{"synthesis", "string", "dense", ""}, {"factor", "int", "", ""}});
  }
  options::check_tensors(kWho, args,
                         {"dense_w1", "dense_b1", "dense_w2", "dense_b2", "fdense_w1", "fdense_b1", "fdense_w2",
                          "fdense_b2", "random", "random_u", "random_v", "mix"});
  const AttentionDims dims = validate_attention("synthesizer", q, k, v, opts);
  EF_CHECK(dims.N == dims.M, ShapeError, kWho, ": self-attention only (its logits are per position): q has ",
           dims.N, " positions and k ", dims.M);
  check_weights(parts, args, dims.H, dims.d, dims.N, factor);
  return synthesized_attention(parts, args, factor, q, k, v, 0, opts, dims.scale);
}

MechanismEntry synthesizer_entry() {
  MechanismEntry e;
  e.name = "synthesizer";
  e.description =
      "Synthesizer: attention weights from a per-token MLP (dense) or learned matrices (random), "
      "factorized, mixed with dot product (Tay et al. 2020, sec. 3)";
  e.capabilities = {.causal = true,
                    .bidirectional = true,
                    .padding_mask = true,
                    .recurrent = true,
                    .fixed_length = true,
                    .dropout = true};
  e.reference = "synthesizer";
  e.options = synthesizer_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_synthesizer_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<SynthesizerAttention>(c);
  };
  e.functional = synthesizer_attention;
  return e;
}

namespace {
ProjectionSpec synthesizer_projections(const SynthesizerOptions& o) {
  const bool dot = uses(o.synthesis, Synthesis::DotProduct);
  ProjectionSpec spec;
  spec.query_key = dot || uses(o.synthesis, Synthesis::Dense) || uses(o.synthesis, Synthesis::FactorizedDense);
  spec.shared_qk = !dot;  // the dense MLP reads q only: no k_proj
  return spec;
}
}  // namespace

SynthesizerAttention::SynthesizerAttention(const MechanismConfig& config)
    : SynthesizerAttention(config, parse_synthesizer_options(config.options, config.positions)) {}

SynthesizerAttention::SynthesizerAttention(const MechanismConfig& config, SynthesizerOptions options)
    : ProjectedAttention("SynthesizerAttention", "synthesizer", config, options.multi_head,
                         synthesizer_projections(options)),
      options_(options) {
  const int64_t L = config.max_len, d = d_;
  const auto& parts = options_.synthesis;
  if (uses(parts, Synthesis::FactorizedDense)) {
    if (options_.factor == 0) options_.factor = default_factor(L);
    EF_CHECK((options_.factor < L && L % options_.factor == 0) || L == 1, ValueError, label(), ": option factor = ",
             options_.factor, "; expected a divisor a of max_len = ", L, " with a < max_len (a b = max_len)");
  }
  const float mlp_std = 1.0f / std::sqrt(float(d));
  for (const char* prefix : {"dense", "fdense"}) {
    const bool factorized = prefix[0] == 'f';
    if (!uses(parts, factorized ? Synthesis::FactorizedDense : Synthesis::Dense)) continue;
    const int64_t width = factorized ? options_.factor + std::max<int64_t>(1, L / options_.factor) : L;
    const std::string p = prefix;
    register_parameter(p + "_w1", nn::normal_init({H_, d, d}, mlp_std));
    register_parameter(p + "_b1", Tensor::zeros({H_, d}));
    register_parameter(p + "_w2", nn::normal_init({H_, d, width}, mlp_std));
    register_parameter(p + "_b2", Tensor::zeros({H_, width}));
  }
  auto random = [&](const std::string& name, const Shape& shape, float std) {
    if (options_.trainable)
      register_parameter(name, nn::normal_init(shape, std));
    else
      register_buffer(name, nn::normal_init(shape, std));
  };
  if (uses(parts, Synthesis::Random)) random("random", {H_, L, L}, 1.0f);
  if (uses(parts, Synthesis::FactorizedRandom)) {
    // Entries of R1 R2^T with variance 1, as the unfactorized matrix's.
    const float std = std::pow(float(options_.rank), -0.25f);
    random("random_u", {H_, L, options_.rank}, std);
    random("random_v", {H_, L, options_.rank}, std);
  }
  if (parts.size() > 1) register_parameter("mix", Tensor::zeros({H_, int64_t(parts.size())}));
}

std::string SynthesizerAttention::describe() const {
  std::string synthesis;
  for (Synthesis s : options_.synthesis)
    for (const auto& [t, name] : kSynthesisNames)
      if (t == s) synthesis += (synthesis.empty() ? "" : "+") + name;
  return detail::concat("SynthesizerAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", synthesis=", synthesis, ", causal=", config_.causal ? "true" : "false",
                        ", max_len=", config_.max_len, ")");
}

MechanismArgs SynthesizerAttention::weights() const {
  MechanismArgs w;
  for (const char* name : {"dense_w1", "dense_b1", "dense_w2", "dense_b2", "fdense_w1", "fdense_b1", "fdense_w2",
                           "fdense_b2", "random", "random_u", "random_v", "mix"}) {
    if (const Tensor* p = find_parameter(name)) w.tensors[name] = *p;
    if (const Tensor* b = find_buffer(name)) w.tensors[name] = *b;
  }
  return w;
}

Tensor SynthesizerAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  const float scale = 1.0f / std::sqrt(float(d_));
  return output(synthesized_attention(options_.synthesis, weights(), options_.factor, h.q, h.k, h.v, 0, opts, scale));
}

namespace {
// The native step's cache: K (dot product only) and V [B, H, T, d].
struct SynthesizerCache : RecurrentState {
  Tensor k, v;
  int64_t length() const override { return v.defined() ? v.size(2) : 0; }
};
}  // namespace

std::unique_ptr<RecurrentState> SynthesizerAttention::start_native(int64_t) const {
  return std::make_unique<SynthesizerCache>();
}

Tensor SynthesizerAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& cache = static_cast<SynthesizerCache&>(state);
  const int64_t offset = cache.length();
  const Heads h = project_step(x_t, offset);
  cache.v = cache.v.defined() ? cat({cache.v, h.v}, 2) : contiguous(h.v);
  if (uses(options_.synthesis, Synthesis::DotProduct))
    cache.k = cache.k.defined() ? cat({cache.k, h.k}, 2) : contiguous(h.k);
  AttentionOptions opts;
  opts.causal = true;
  opts.dropout = active_dropout();
  const float scale = 1.0f / std::sqrt(float(d_));
  return output(synthesized_attention(options_.synthesis, weights(), options_.factor, h.q, cache.k, cache.v, offset,
                                      opts, scale));
}

}  // namespace eformer::attention
