#include "eformer/models/pooling.h"

#include <cmath>

#include "eformer/ops/activation.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

PmaPooling::PmaPooling(int64_t d_model, int64_t heads) : Module("PmaPooling"), D_(d_model), H_(heads) {
  seed_ = &register_parameter("seed", nn::normal_init({1, D_}, 1.0f / std::sqrt(float(D_))));
  rff_ = register_module("rff", std::make_shared<nn::Linear>(D_, D_));
  block_ = register_module("block", std::make_shared<attention::SetAttentionBlock>(D_, H_, true));
}

std::string PmaPooling::describe() const { return detail::concat("PmaPooling(d_model=", D_, ", heads=", H_, ", seeds=1)"); }

Tensor PmaPooling::forward(const Tensor& z, const Tensor& key_mask) const {
  const Tensor pooled = block_->forward(reshape(*seed_, {1, 1, D_}), relu(rff_->forward(z)), key_mask);  // [B, 1, D]
  return reshape(pooled, {pooled.size(0), D_});
}

}  // namespace eformer::models
