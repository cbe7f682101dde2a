// The Induced Set Attention Block of the Set Transformer (Lee et al. 2019, arXiv:1810.00825, eq. 9):
//     ISAB_m(X) = MAB(X, H),   H = MAB(I, X) in R^{m x D}
// with m learned inducing points I (option inducing, 32) and MAB the Multihead Attention Block
// (set_block.h): O(N m) instead of O(N^2). Bidirectional only (a set has no order; no causal form).
//
// Where the paper's pieces live. The inner MAB(I, X) is whole inside the mechanism (its query projection
// of I, output projection, residual from I, both LayerNorms and rFF: module "inducing_block"), since
// nothing outside sees H; its keys and values are the mechanism's k_proj and v_proj of X. The outer
// MAB(X, H) is split: its multi-head attention (q_proj of X, h_k_proj and h_v_proj of H, out_proj) is
// the mechanism; its residual, LayerNorms and rFF are the surrounding Transformer block's. With
// "pre_ln": false the block is exactly LN(Hh + FFN(Hh)), Hh = LN(X + Multihead(X, H, H)) (the paper's MAB
// with the block's FFN as rFF); with pre-LN the LayerNorms move in front as usual. So a stack of blocks
// is a stack of ISABs, without doubling the block's own residuals and norms.
// No positions (rotary would break permutation equivariance). Attention dropout on the outer attention's
// probabilities only (the inner one feeds LayerNorms, where dropping would bias the expectation).
// Padding masks: padded tokens are left out of the inducing step's keys.
#pragma once
#include <memory>

#include "eformer/attention/projected.h"
#include "eformer/attention/set_block.h"

namespace eformer::attention {

// The registry entry of "isab".
MechanismEntry isab_entry();

// Functional form: ISAB's two attentions per head with the MAB projections, residuals, LayerNorms and
// rFF left out, q, k, v [B, H, N, d] and the inducing queries I [H, m, d] (tensor argument "inducing"):
//     H_h = softmax(I_h k_h^T / sqrt(d)) v_h,   out_h = softmax(q_h H_h^T / sqrt(d)) H_h.
// opts.key_mask masks the keys of the first attention; dropout on the second's probabilities.
Tensor isab_core(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inducing,
                 const AttentionOptions& opts);

struct IsabOptions {
  int64_t inducing = 32;  // m
};
IsabOptions parse_isab_options(const nlohmann::json& options);

class IsabAttention : public ProjectedAttention {
 public:
  explicit IsabAttention(const MechanismConfig& config);
  std::string describe() const override;

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;

 private:
  IsabOptions options_;
  Tensor* inducing_ = nullptr;  // I [m, D]
  std::shared_ptr<SetAttentionBlock> block_;
  std::shared_ptr<nn::Linear> h_k_proj_, h_v_proj_;
};

}  // namespace eformer::attention
