// Exact multi-head attention (Vaswani et al. 2017, sec. 3.2.2, eq. 1: softmax(Q K^T / sqrt(d)) V) as
// a sequence mixer: q, k, v projections, heads split to [B, H, N, d], the exact core, heads merged,
// output projection. Registered as "full" (materialized scores, kernels/full.h: the readable
// reference) and "flash" (fused, tiled online softmax, kernels/flash.h); the two differ only in the
// core they call. Pattern: every key (bidirectional, cross) or keys j <= i + M - N (causal).
//
// Options (MechanismConfig::options; unknown keys are a ValueError listing these):
//   "rotary": bool (default: the model's positions == "rotary")  rotary embeddings on q and k
//   "rotary_base": number (10000)                                  the rotary base
// Self-attention is causal when config.causal; cross-attention takes k and v from the memory and is
// never causal (nor rotary). key_mask masks keys (the memory's when cross). Attention dropout
// (config.dropout, training mode) drops probabilities, replayed exactly under recomputation.
//
// Recurrent step: a KV cache. The state holds K, V [B, H, T, d]; step(x_t [B, T', D]) appends the
// new keys and values, rotates the new queries and keys at offset T, and attends the new queries to
// all T + T' keys with the core's bottom-right aligned causal mask, which equals the parallel pass.
#pragma once
#include <string>

#include "eformer/attention/projected.h"
#include "eformer/attention/registry.h"

namespace eformer::attention {

// The registry entry of "full" or "flash".
MechanismEntry exact_entry(const std::string& name);

class MultiHeadAttention : public ProjectedAttention {
 public:
  // kind: "full" or "flash".
  MultiHeadAttention(std::string kind, const MechanismConfig& config);
  std::string describe() const override;
  const std::string& kind() const { return name(); }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  Tensor core(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) const;
};

}  // namespace eformer::attention
