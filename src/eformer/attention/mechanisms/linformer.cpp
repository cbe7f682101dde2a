#include "eformer/attention/mechanisms/linformer.h"

#include <cmath>

#include "eformer/attention/kernels/narrow_attention.h"
#include "eformer/attention/kernels/per_head_matmul.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/select.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const char* const kWho = "attention 'linformer'";

std::vector<OptionSpec> linformer_option_specs() {
  std::vector<OptionSpec> specs = {
      {"k", "int", "256", "the projected length: E, F are [k, max_len] (Linformer eq. 7)"},
      {"sharing", "string", "headwise",
       "none (E, F per head) | headwise (one E, F per layer) | kv (E = F) | layerwise (one E = F for the "
       "whole model)"}};
  for (auto& s : multi_head_option_specs()) specs.push_back(s);
  return specs;
}

// Bool [B, 1, M, 1]: true at the padded keys of key_mask [B, M].
Tensor padded_keys(const Tensor& key_mask) {
  const int64_t B = key_mask.size(0), M = key_mask.size(1);
  Tensor padded = Tensor::empty({B, 1, M, 1}, DType::Bool);
  const Tensor real = key_mask.contiguous_data();
  for (int64_t i = 0; i < B * M; ++i) padded.data<bool>()[i] = !real.data<bool>()[i];
  return padded;
}

// K' = E K, V' = F V over the first M columns, then exact softmax attention of q over the k' rows.
Tensor project_and_attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& E, const Tensor& F,
                          const AttentionOptions& opts) {
  const int64_t M = k.size(2);
  Tensor keys = k, values = v;
  if (opts.key_mask.defined()) {
    const Tensor padded = padded_keys(opts.key_mask);
    keys = masked_fill(k, padded, 0.0f), values = masked_fill(v, padded, 0.0f);
  }
  const Tensor kp = contiguous(per_head_left(slice(E, 2, 0, M), keys));
  const Tensor vp = contiguous(per_head_left(slice(F, 2, 0, M), values));
  AttentionOptions inner = opts;
  inner.key_mask = Tensor();
  return narrow_attention(q, kp, vp, inner);
}

void check_projection(const char* what, const Tensor& p, int64_t H, int64_t M, int64_t rows) {
  EF_CHECK(p.dtype() == DType::Float32 && p.dim() == 3 && (p.size(0) == 1 || p.size(0) == H) &&
               p.size(2) >= M && (rows < 0 || p.size(1) == rows) && p.size(1) >= 1,
           ShapeError, kWho, ": ", what, " is ", p.describe(), "; expected float32 [", H, " or 1, ",
           rows < 0 ? std::string("k") : std::to_string(rows), ", >= ", M, "]");
}

}  // namespace

LinformerOptions parse_linformer_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  LinformerOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_multi_head_option(kWho, key, value, o.multi_head)) continue;
    if (key == "k")
      o.k = options::get_int(kWho, key, value, 1, 65536);
    else if (key == "sharing")
      o.sharing = options::get_string(kWho, key, value, {"none", "headwise", "kv", "layerwise"});
    else
      options::unknown(kWho, key, linformer_option_specs());
  }
  return o;
}

Tensor linformer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                           const MechanismArgs& args) {
  for (const auto& [key, value] : args.options.items()) options::unknown(kWho, key, {});
  options::check_tensors(kWho, args, {"E", "F"});
  EF_CHECK(!opts.causal, ValueError, kWho,
           " has no causal form (the length projection mixes every position into each row)");
  const AttentionDims dims = validate_attention("linformer", q, k, v, opts);
  const auto e = args.tensors.find("E");
  EF_CHECK(e != args.tensors.end(), ValueError, kWho, ": needs the tensor argument E [heads or 1, k, >= ",
           dims.M, "] (and optionally F; F = E without it)");
  const auto f = args.tensors.find("F");
  const Tensor& E = e->second;
  const Tensor& F = f == args.tensors.end() ? E : f->second;
  check_projection("E", E, dims.H, dims.M, -1);
  check_projection("F", F, dims.H, dims.M, E.size(1));
  return project_and_attend(q, k, v, E, F, opts);
}

MechanismEntry linformer_entry() {
  MechanismEntry e;
  e.name = "linformer";
  e.description =
      "Linformer: keys and values projected along the length by learned E, F [k, max_len], O(N k) "
      "(Wang et al. 2020, eq. 7)";
  e.capabilities = {.bidirectional = true, .padding_mask = true, .fixed_length = true, .dropout = true};
  e.reference = "linformer";
  e.options = linformer_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_linformer_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<LinformerAttention>(c);
  };
  e.functional = linformer_attention;
  return e;
}

LinformerAttention::LinformerAttention(const MechanismConfig& config)
    : LinformerAttention(config, parse_linformer_options(config.options, config.positions)) {}

LinformerAttention::LinformerAttention(const MechanismConfig& config, LinformerOptions options)
    : ProjectedAttention("LinformerAttention", "linformer", config, options.multi_head), options_(options) {
  const int64_t L = config.max_len, k = options_.k;
  const float std = 1.0f / std::sqrt(float(k));
  if (options_.sharing == "layerwise") {
    // The model's first linformer layer owns E; this layer uses it when it is layerwise with the same sizes.
    const auto* first = dynamic_cast<const LinformerAttention*>(config.shared_from);
    if (first && first->options_.sharing == "layerwise") {
      EF_CHECK(first->options_.k == k && first->config_.max_len == L, ValueError, label(),
               ": sharing = layerwise uses the first linformer layer's E [1, ", first->options_.k, ", ",
               first->config_.max_len, "], but this layer has k = ", k, " and max_len = ", L);
      e_ = f_ = first->e_;
      return;
    }
  }
  const int64_t heads = options_.sharing == "none" ? H_ : 1;
  e_ = &register_parameter("E", nn::normal_init({heads, k, L}, std));
  f_ = options_.sharing == "none" || options_.sharing == "headwise"
           ? &register_parameter("F", nn::normal_init({heads, k, L}, std))
           : e_;
}

std::string LinformerAttention::describe() const {
  return detail::concat("LinformerAttention(d_model=", config_.d_model, ", n_heads=", H_, ", k=", options_.k,
                        ", sharing=", options_.sharing, ", max_len=", config_.max_len, ")");
}

Tensor LinformerAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  return output(project_and_attend(h.q, h.k, h.v, *e_, *f_, opts));
}

}  // namespace eformer::attention
