// Dropout as a module: active only in training mode (Module::train / eval). The mask comes from
// the default generator and is replayed exactly by autograd::checkpoint (see ops/dropout.h).
#pragma once
#include "eformer/nn/module.h"

namespace eformer::nn {

class Dropout : public Module {
 public:
  // p in [0, 1) (ValueError otherwise).
  explicit Dropout(float p = 0.5f);  // torch.nn.Dropout's default
  std::string describe() const override;

  // x itself in eval mode or when p == 0; otherwise zeroes elements with probability p and scales
  // the rest by 1 / (1 - p).
  Tensor forward(const Tensor& x) const;
  // True when forward draws random numbers (training and p > 0).
  bool active() const { return is_training() && p_ > 0.0f; }

  float p() const { return p_; }

 private:
  float p_;
};

}  // namespace eformer::nn
