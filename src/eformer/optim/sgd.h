// Stochastic gradient descent with momentum, step for step as torch.optim.SGD:
//   d <- g + weight_decay * p
//   with momentum mu > 0:  b <- d on the first update, else b <- mu * b + (1 - dampening) * d
//                          d <- d + mu * b (nesterov) or d <- b
//   p <- p - lr * d
// State buffer (only with momentum): "momentum_buffer" (b).
#pragma once
#include "eformer/optim/optimizer.h"

namespace eformer::optim {

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  // ValueError on lr < 0, momentum < 0, weight_decay < 0, or nesterov without momentum or with
  // dampening (as PyTorch), or a bad parameter.
  explicit SGD(std::vector<Tensor> params, const SGDOptions& options = {});
  void step() override;
  SGDOptions options() const;  // with the current lr

 private:
  SGDOptions options_;
};

// The update of one parameter over n elements; `momentum_buffer` is null without momentum, and
// `first` says the buffer is initialised from this step's direction.
void sgd_update(float* param, const float* grad, float* momentum_buffer, int64_t n, bool first,
                const SGDOptions& options);

}  // namespace eformer::optim
