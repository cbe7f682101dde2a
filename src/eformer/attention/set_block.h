// The Multihead Attention Block of the Set Transformer (Lee et al. 2019, arXiv:1810.00825, eq. 6-7):
//     MAB(X, Y) = LayerNorm(Hh + rFF(Hh)),   Hh = LayerNorm(X + Multihead(X, Y, Y))
// with Multihead(Q, K, V) = concat(head_1, ..., head_H) W^O, head_i = softmax(Q W^Q_i (K W^K_i)^T / sqrt(d)) V W^V_i
// (the flash kernel) and rFF(h) = relu(h W + b), one row-wise layer (the paper allows any; its authors' code
// uses this one). The building block of ISAB's inducing step (mechanisms/isab.h) and of PMA pooling
// (models/encoder.h). Names: q_proj, [k_proj, v_proj,] out_proj, norm1, ff, norm2.
#pragma once
#include <memory>

#include "eformer/nn/linear.h"
#include "eformer/nn/normalization.h"

namespace eformer::attention {

class SetAttentionBlock : public nn::Module {
 public:
  // own_keys false: the block has no k_proj / v_proj; its caller projects Y into heads (forward_heads).
  SetAttentionBlock(int64_t d_model, int64_t heads, bool own_keys);
  std::string describe() const override;

  // X [B or 1, m, D] (a [1, m, D] X, such as learned seeds, is shared by the batch), Y [B, N, D],
  // key_mask Bool [B, N] (undefined: every element of Y is real) -> [B, m, D].
  Tensor forward(const Tensor& x, const Tensor& y, const Tensor& key_mask = {}) const;
  // The same with Y already projected into heads: k, v [B, H, N, d].
  Tensor forward_heads(const Tensor& x, const Tensor& k, const Tensor& v, const Tensor& key_mask) const;

 private:
  int64_t D_, H_;
  std::shared_ptr<nn::Linear> q_proj_, k_proj_, v_proj_, out_proj_, ff_;
  std::shared_ptr<nn::LayerNorm> norm1_, norm2_;
};

// [B, n, H d] <-> [B, H, n, d].
Tensor split_heads(const Tensor& x, int64_t heads);
Tensor merge_heads(const Tensor& x);

}  // namespace eformer::attention
