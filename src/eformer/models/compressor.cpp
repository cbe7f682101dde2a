#include "eformer/models/compressor.h"

#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

Compressor::Compressor(const std::string& kind, int64_t d_model, int64_t rate)
    : Module("Compressor"), kind_(kind), d_model_(d_model), rate_(rate) {
  EF_CHECK(kind == "max_pool" || kind == "mean_pool" || kind == "conv", ValueError, "compression '", kind,
           "' is not implemented; expected max_pool, mean_pool or conv");
  EF_CHECK(rate >= 1 && d_model >= 1, ValueError, "compressor: rate = ", rate, ", d_model = ", d_model,
           "; expected >= 1");
  if (kind == "conv") conv_ = register_module("conv", std::make_shared<nn::Linear>(rate * d_model, d_model, true));
}

std::string Compressor::describe() const {
  return detail::concat("Compressor(", kind_, ", rate=", rate_, ", d_model=", d_model_, ")");
}

Tensor Compressor::forward(const Tensor& x) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d_model_ && x.size(1) % rate_ == 0, ShapeError, where(),
           "expected [batch, n, ", d_model_, "] with n a multiple of the rate ", rate_, ", got ",
           x.defined() ? x.describe() : std::string("undefined"));
  const int64_t B = x.size(0), n = x.size(1) / rate_;
  if (conv_) return conv_->forward(reshape(x, {B, n, rate_ * d_model_}));  // the window, flattened
  Tensor windows = reshape(x, {B, n, rate_, d_model_});
  if (kind_ == "max_pool") return max(windows, 2).first;
  return mean(windows, {2});
}

}  // namespace eformer::models
