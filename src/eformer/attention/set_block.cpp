#include "eformer/attention/set_block.h"

#include "eformer/attention/kernels/narrow_attention.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {

Tensor split_heads(const Tensor& x, int64_t heads) {
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2);
  return permute(reshape(x, {B, n, heads, D / heads}), {0, 2, 1, 3});
}

Tensor merge_heads(const Tensor& x) {
  const int64_t B = x.size(0), H = x.size(1), n = x.size(2), d = x.size(3);
  return reshape(permute(x, {0, 2, 1, 3}), {B, n, H * d});
}

SetAttentionBlock::SetAttentionBlock(int64_t d_model, int64_t heads, bool own_keys)
    : Module("SetAttentionBlock"), D_(d_model), H_(heads) {
  EF_CHECK(d_model >= 1 && heads >= 1 && d_model % heads == 0, ValueError, "SetAttentionBlock: d_model = ",
           d_model, ", heads = ", heads, "; expected d_model a positive multiple of heads");
  q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(D_, D_));
  if (own_keys) {
    k_proj_ = register_module("k_proj", std::make_shared<nn::Linear>(D_, D_));
    v_proj_ = register_module("v_proj", std::make_shared<nn::Linear>(D_, D_));
  }
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(D_, D_));
  norm1_ = register_module("norm1", std::make_shared<nn::LayerNorm>(D_));
  ff_ = register_module("ff", std::make_shared<nn::Linear>(D_, D_));
  norm2_ = register_module("norm2", std::make_shared<nn::LayerNorm>(D_));
}

std::string SetAttentionBlock::describe() const {
  return detail::concat("SetAttentionBlock(d_model=", D_, ", heads=", H_, ")");
}

Tensor SetAttentionBlock::forward(const Tensor& x, const Tensor& y, const Tensor& key_mask) const {
  EF_CHECK(k_proj_, ValueError, "SetAttentionBlock: this block takes its keys as heads (forward_heads)");
  EF_CHECK(y.defined() && y.dim() == 3 && y.size(2) == D_, ShapeError, "SetAttentionBlock: Y is ",
           y.defined() ? y.describe() : "undefined", "; expected [batch, n, ", D_, "]");
  return forward_heads(x, split_heads(k_proj_->forward(y), H_), split_heads(v_proj_->forward(y), H_), key_mask);
}

Tensor SetAttentionBlock::forward_heads(const Tensor& x, const Tensor& k, const Tensor& v,
                                        const Tensor& key_mask) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == D_ && k.defined() && k.dim() == 4 &&
               (x.size(0) == 1 || x.size(0) == k.size(0)),
           ShapeError, "SetAttentionBlock: X is ", x.defined() ? x.describe() : "undefined", " and K ",
           k.defined() ? k.describe() : "undefined", "; expected [1 or batch, m, ", D_, "] and [batch, ", H_,
           ", n, ", D_ / H_, "]");
  const int64_t B = k.size(0), m = x.size(1);
  Tensor q = split_heads(q_proj_->forward(x), H_);  // a shared X is projected once
  if (q.size(0) != B) q = expand(q, {B, H_, m, D_ / H_});
  AttentionOptions opts;
  opts.key_mask = key_mask;
  const Tensor attended = out_proj_->forward(merge_heads(narrow_attention(q, k, v, opts)));
  const Tensor h = norm1_->forward(add(x.size(0) == B ? x : expand(x, {B, m, D_}), attended));  // Hh = LN(X + Multihead)
  return norm2_->forward(add(h, relu(ff_->forward(h))));  // LN(Hh + rFF(Hh))
}

}  // namespace eformer::attention
