// Memory-compressed attention (Liu et al. 2018, "Generating Wikipedia by Summarizing Long Sequences",
// sec. 4.2.3) with local attention (sec. 4.2.2) in one softmax. Keys and values are compressed by a
// learned strided convolution, kernel = stride = c (per head: k~_w = sum_{t < c} k_{w c + t} W_t + b,
// W [c, d, d]), so the N/c windows are the compressed memory; a query attends all of them plus, exactly,
// the keys of its own block of `block` positions:
//     y_i = softmax([q_i k~^T, q_i K_blk(i)^T] / sqrt(d)) [V~; V_blk(i)]
// Causal: the windows wholly before the query's block (w < floor(b block / c) for block b: all in its past,
// and no position counted twice) and the block's keys j <= i. A trailing N mod c positions belong to no window
// (they are seen through their block only). Bidirectional: every window and the whole block. Computed by the
// fused kernel twice, merged by log-sum-exp (kernels/compressed_local.h): O(N (W + block) d) time, O(N d)
// memory, no score matrix; the paper's factor-c saving on the N x N scores, not a linear mechanism.
//
// Options: compression (c, 3 as the paper), block (256, the paper's local block), rotary, rotary_base.
// Parameters k_conv, v_conv [H, c, d, d] and k_conv_bias, v_conv_bias [H, d] (init N(0, 1/(c d)), 0). The
// paper convolves d_model channels before the heads split; here each head's keys and values are convolved
// on their own (a grouped convolution, groups = heads). No attention dropout (the fused passes keep no
// probabilities) and no padding mask. Streaming: the fallback (recompute), which equals the parallel pass.
#pragma once
#include <string>

#include "eformer/attention/projected.h"

namespace eformer::attention {

MechanismEntry memory_compressed_entry();

struct MemoryCompressedOptions {
  int64_t compression = 3;
  int64_t block = 256;
  MultiHeadOptions multi_head;
};
MemoryCompressedOptions parse_memory_compressed_options(const nlohmann::json& options,
                                                        const std::string& positions = "none");

// Functional form: q, k, v [B, H, N, d] (self-attention); args.tensors "k_conv", "v_conv" [H, c, d, d] and
// optionally "k_conv_bias", "v_conv_bias" [H, d]; args.options "block" (256). opts: causal, scale; no
// key_mask or dropout (ValueError).
Tensor memory_compressed_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                   const MechanismArgs& args = {});

class MemoryCompressedAttention : public ProjectedAttention {
 public:
  explicit MemoryCompressedAttention(const MechanismConfig& config);
  std::string describe() const override;
  const MemoryCompressedOptions& options() const { return options_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;

 private:
  MemoryCompressedAttention(const MechanismConfig& config, MemoryCompressedOptions options);
  MemoryCompressedOptions options_;
  Tensor *k_conv_, *k_bias_, *v_conv_, *v_bias_;
};

}  // namespace eformer::attention
