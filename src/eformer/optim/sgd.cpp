#include "eformer/optim/sgd.h"

#include <cmath>

#include "eformer/core/error.h"
#include "eformer/core/parallel.h"

namespace eformer::optim {
namespace {

std::vector<std::string> sgd_buffers(const SGDOptions& o) {
  if (o.momentum != 0.0) return {"momentum_buffer"};
  return {};
}

}  // namespace

SGD::SGD(std::vector<Tensor> params, const SGDOptions& options)
    : Optimizer("SGD", std::move(params), options.lr, sgd_buffers(options)), options_(options) {
  EF_CHECK(options.momentum >= 0.0 && std::isfinite(options.momentum), ValueError, "SGD: invalid momentum ",
           options.momentum, "; expected a finite value >= 0");
  EF_CHECK(std::isfinite(options.dampening), ValueError, "SGD: invalid dampening ", options.dampening);
  EF_CHECK(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay), ValueError,
           "SGD: invalid weight_decay ", options.weight_decay, "; expected a finite value >= 0");
  EF_CHECK(!options.nesterov || (options.momentum > 0.0 && options.dampening == 0.0), ValueError,
           "SGD: nesterov momentum requires a momentum > 0 and zero dampening (got momentum ",
           options.momentum, ", dampening ", options.dampening, ")");
}

SGDOptions SGD::options() const {
  SGDOptions o = options_;
  o.lr = lr_;
  return o;
}

void sgd_update(float* param, const float* grad, float* buf, int64_t n, bool first, const SGDOptions& o) {
  const float lr = float(o.lr), wd = float(o.weight_decay), mu = float(o.momentum);
  const float keep = float(1.0 - o.dampening);
  const bool nesterov = o.nesterov;
  parallel::parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float d = grad[i];
      if (wd != 0.f) d += wd * param[i];
      if (buf) {
        const float b = first ? d : mu * buf[i] + keep * d;
        buf[i] = b;
        d = nesterov ? d + mu * b : b;
      }
      param[i] -= lr * d;
    }
  });
}

void SGD::step() {
  const SGDOptions o = options();
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = grad_for(i);
    if (!g.defined()) continue;
    ParamState& s = state_for(i);
    bool first = s.steps == 0;
    s.steps += 1;
    float* buf = s.buffers.empty() ? nullptr : s.buffers[0].data<float>();
    sgd_update(params_[i].data<float>(), g.data<float>(), buf, params_[i].numel(), first, o);
  }
  step_count_ += 1;
}

}  // namespace eformer::optim
