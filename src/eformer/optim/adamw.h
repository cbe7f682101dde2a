// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), step for step as
// torch.optim.AdamW (amsgrad=False). For a parameter p with gradient g at its t-th update:
//   p   <- p * (1 - lr * weight_decay)
//   m   <- beta1 * m + (1 - beta1) * g
//   v   <- beta2 * v + (1 - beta2) * g^2
//   p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// State buffers: "exp_avg" (m) and "exp_avg_sq" (v).
#pragma once
#include "eformer/optim/optimizer.h"

namespace eformer::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

class AdamW : public Optimizer {
 public:
  // ValueError on lr < 0, a beta outside [0, 1), eps <= 0, weight_decay < 0 or a bad parameter.
  explicit AdamW(std::vector<Tensor> params, const AdamWOptions& options = {});
  void step() override;
  AdamWOptions options() const;  // with the current lr

 private:
  AdamWOptions options_;
};

// The update of one parameter over n elements (t is its 1-based update count); element-wise, so
// the result is the same on any thread count.
void adamw_update(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, int64_t t,
                  const AdamWOptions& options);

}  // namespace eformer::optim
