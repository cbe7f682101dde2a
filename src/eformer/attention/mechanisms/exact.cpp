#include "eformer/attention/mechanisms/exact.h"

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/kernels/full.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

// The KV cache: K, V [B, H, T, d] (undefined before the first step).
struct KVCache : RecurrentState {
  Tensor k, v;
  int64_t length() const override { return k.defined() ? k.size(2) : 0; }
};

using ExactKernel = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&);
ExactKernel kernel_of(const std::string& kind) { return kind == "full" ? &full_attention : &flash_attention; }

}  // namespace

MechanismEntry exact_entry(const std::string& name) {
  MechanismEntry e;
  e.name = name;
  e.description = name == "full"
                      ? "exact softmax attention with materialized N x M scores (Vaswani et al. 2017, eq. 1)"
                      : "exact softmax attention, fused tiled online softmax, O(N) memory (FlashAttention, "
                        "Dao et al. 2022)";
  e.capabilities = {.causal = true,
                    .bidirectional = true,
                    .cross = true,
                    .padding_mask = true,
                    .recurrent = true,
                    .dropout = true};
  e.reference = "softmax-pattern";
  e.options = multi_head_option_specs();
  e.check_options = [name](const nlohmann::json& o) { parse_multi_head_options(name, o); };
  e.make = [name](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<MultiHeadAttention>(name, c);
  };
  e.functional = [name, kernel = kernel_of(name)](const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const AttentionOptions& opts, const MechanismArgs& args) {
    const std::string who = "attention '" + name + "'";
    for (const auto& [key, value] : args.options.items()) options::unknown(who, key, {});
    options::check_tensors(who, args, {});
    return kernel(q, k, v, opts);
  };
  e.pattern = [](int64_t N, int64_t M, int64_t heads, bool causal, const MechanismArgs& args, uint64_t) {
    for (const auto& [key, value] : args.options.items()) options::unknown("attention_pattern", key, {});
    Tensor p = Tensor::zeros({heads, N, M}, DType::Bool);
    bool* out = p.data<bool>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < M; ++j) out[(h * N + i) * M + j] = !causal || causal_allows(i, j, N, M);
    return p;
  };
  return e;
}

MultiHeadAttention::MultiHeadAttention(std::string kind, const MechanismConfig& config)
    : ProjectedAttention("MultiHeadAttention", kind, config,
                         parse_multi_head_options(kind, config.options, config.positions)) {}

std::string MultiHeadAttention::describe() const {
  return detail::concat("MultiHeadAttention(kind=", name(), ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false",
                        ", cross=", config_.cross ? "true" : "false",
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Tensor MultiHeadAttention::core(const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionOptions& opts) const {
  return kernel_of(name())(q, k, v, opts);
}

Tensor MultiHeadAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal && !config_.cross;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  return output(core(h.q, h.k, h.v, opts));
}

std::unique_ptr<RecurrentState> MultiHeadAttention::start_native(int64_t) const {
  return std::make_unique<KVCache>();
}

Tensor MultiHeadAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& cache = static_cast<KVCache&>(state);
  const Heads h = project_step(x_t, cache.length());
  cache.k = cache.k.defined() ? cat({cache.k, h.k}, 2) : contiguous(h.k);
  cache.v = cache.v.defined() ? cat({cache.v, h.v}, 2) : contiguous(h.v);
  AttentionOptions opts;
  opts.causal = true;  // bottom-right aligned: new query t sees keys up to offset + t
  opts.dropout = active_dropout();
  return output(core(h.q, cache.k, cache.v, opts));
}

}  // namespace eformer::attention
