#include "eformer/optim/adamw.h"

#include <cmath>

#include "eformer/core/error.h"
#include "eformer/core/parallel.h"

namespace eformer::optim {

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& options)
    : Optimizer("AdamW", std::move(params), options.lr, {"exp_avg", "exp_avg_sq"}), options_(options) {
  auto beta_ok = [](double b) { return b >= 0.0 && b < 1.0; };
  EF_CHECK(beta_ok(options.beta1), ValueError, "AdamW: invalid beta1 ", options.beta1,
           "; expected 0 <= beta1 < 1");
  EF_CHECK(beta_ok(options.beta2), ValueError, "AdamW: invalid beta2 ", options.beta2,
           "; expected 0 <= beta2 < 1");
  EF_CHECK(options.eps > 0.0 && std::isfinite(options.eps), ValueError, "AdamW: invalid eps ", options.eps,
           "; expected a finite value > 0");
  EF_CHECK(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay), ValueError,
           "AdamW: invalid weight_decay ", options.weight_decay, "; expected a finite value >= 0");
}

AdamWOptions AdamW::options() const {
  AdamWOptions o = options_;
  o.lr = lr_;
  return o;
}

void adamw_update(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, int64_t t,
                  const AdamWOptions& o) {
  const float decay = float(1.0 - o.lr * o.weight_decay);
  const float beta1 = float(o.beta1), beta2 = float(o.beta2);
  const float one_minus_beta1 = float(1.0 - o.beta1), one_minus_beta2 = float(1.0 - o.beta2);
  const float step_size = float(o.lr / (1.0 - std::pow(o.beta1, double(t))));
  const float inv_bias_correction2_sqrt = float(1.0 / std::sqrt(1.0 - std::pow(o.beta2, double(t))));
  const float eps = float(o.eps);
  parallel::parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i];
      const float m = beta1 * exp_avg[i] + one_minus_beta1 * g;
      const float v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      param[i] = param[i] * decay - step_size * m / (std::sqrt(v) * inv_bias_correction2_sqrt + eps);
    }
  });
}

void AdamW::step() {
  const AdamWOptions o = options();
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = grad_for(i);
    if (!g.defined()) continue;
    ParamState& s = state_for(i);
    s.steps += 1;
    adamw_update(params_[i].data<float>(), g.data<float>(), s.buffers[0].data<float>(),
                 s.buffers[1].data<float>(), params_[i].numel(), s.steps, o);
  }
  step_count_ += 1;
}

}  // namespace eformer::optim
