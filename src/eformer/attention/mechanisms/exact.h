// Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) as a sequence mixer over the exact
// functional core: q, k, v projections, heads split to [B, H, N, d], attention(q, k, v, kind),
// heads merged, output projection. Registered as "full" (materialized scores) and "flash" (fused,
// tiled online softmax); the two differ only in the core they call.
//
// Options (MechanismConfig::options, JSON; unknown keys are a ValueError listing these):
//   "rotary": bool (default false)      rotary embeddings (nn::apply_rotary) on q and k after the
//                                       split; the models set it when positions = "rotary".
//   "rotary_base": number (10000)       the rotary base.
// Self-attention (config.cross false) is causal when config.causal; cross-attention takes k and v
// from the memory and is never causal (nor rotary). key_mask masks keys (the memory's when cross).
//
// Recurrent step: a KV cache. The state holds K, V [B, H, T, d]; step(x_t [B, T', D]) appends the
// new keys and values, rotates the new queries and keys at offset T, and attends the new queries to
// all T + T' keys with the core's bottom-right aligned causal mask, which equals the parallel pass.
#pragma once
#include <string>

#include "eformer/attention/projected.h"

namespace eformer::attention {

class MultiHeadAttention : public ProjectedAttention {
 public:
  // kind: a functional core name ("full", "flash"). d_model % n_heads == 0, both > 0 (ValueError).
  MultiHeadAttention(std::string kind, const MechanismConfig& config);
  std::string describe() const override;
  Capabilities capabilities() const override;
  Tensor forward(const Tensor& x, const Tensor& memory = {}, const Tensor& key_mask = {}) override;
  std::unique_ptr<RecurrentState> start(int64_t batch) const override;
  Tensor step(const Tensor& x_t, RecurrentState& state) override;

  const std::string& kind() const { return kind_; }
  const MultiHeadOptions& options() const { return heads_; }

 private:
  std::string kind_;
};

}  // namespace eformer::attention
