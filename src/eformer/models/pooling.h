// Pooling by Multihead Attention, the Set Transformer's pooling (Lee et al. 2019, eq. 11):
//     PMA_k(Z) = MAB(S, rFF(Z))
// with k learned seed vectors S [k, D] (here k = 1: one vector per sequence for the classifier), rFF(z) =
// relu(z W + b) row-wise and MAB the Multihead Attention Block (attention/set_block.h). Invariant to any
// permutation of the tokens (and of the padding). Names: seed, rff.{weight, bias}, block.*.
#pragma once
#include <memory>

#include "eformer/attention/set_block.h"

namespace eformer::models {

class PmaPooling : public nn::Module {
 public:
  PmaPooling(int64_t d_model, int64_t heads);
  std::string describe() const override;
  // z [B, N, D], key_mask Bool [B, N] (undefined: all real) -> [B, D]; a row without real tokens pools the
  // seed alone (its attention output is 0).
  Tensor forward(const Tensor& z, const Tensor& key_mask = {}) const;

 private:
  int64_t D_, H_;
  Tensor* seed_ = nullptr;
  std::shared_ptr<nn::Linear> rff_;
  std::shared_ptr<attention::SetAttentionBlock> block_;
};

}  // namespace eformer::models
