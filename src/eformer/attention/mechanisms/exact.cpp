#include "eformer/attention/mechanisms/exact.h"

#include "eformer/attention/functional.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

// The KV cache: K, V [B, H, T, d] (undefined before the first step).
struct KVCache : RecurrentState {
  int64_t batch = 0;
  Tensor k, v;
  int64_t length() const override { return k.defined() ? k.size(2) : 0; }
};

}  // namespace

MultiHeadAttention::MultiHeadAttention(std::string kind, const MechanismConfig& config)
    : ProjectedAttention("MultiHeadAttention", kind, config, parse_multi_head_options(kind, config.options)),
      kind_(std::move(kind)) {}

std::string MultiHeadAttention::describe() const {
  return detail::concat("MultiHeadAttention(kind=", kind_, ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false",
                        ", cross=", config_.cross ? "true" : "false",
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Capabilities MultiHeadAttention::capabilities() const {
  return {.causal = true, .bidirectional = true, .cross = true, .padding_mask = true, .recurrent = true};
}

Tensor MultiHeadAttention::forward(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal && !config_.cross;
  opts.key_mask = key_mask;
  return output(attention(h.q, h.k, h.v, kind_, opts));
}

std::unique_ptr<RecurrentState> MultiHeadAttention::start(int64_t batch) const {
  check_start(batch);
  auto state = std::make_unique<KVCache>();
  state->batch = batch;
  return state;
}

Tensor MultiHeadAttention::step(const Tensor& x_t, RecurrentState& state) {
  auto* cache = dynamic_cast<KVCache*>(&state);
  EF_CHECK(cache != nullptr, ValueError, where(), "step: the state was not made by this mechanism's start()");
  const Heads h = project_step(x_t, cache->batch, cache->length());
  cache->k = cache->k.defined() ? cat({cache->k, h.k}, 2) : contiguous(h.k);
  cache->v = cache->v.defined() ? cat({cache->v, h.v}, 2) : contiguous(h.v);
  AttentionOptions opts;
  opts.causal = true;  // bottom-right aligned: new query t sees keys up to offset + t
  return output(attention(h.q, cache->k, cache->v, kind_, opts));
}

}  // namespace eformer::attention
