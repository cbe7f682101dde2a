#include "eformer/nn/dropout.h"

#include "eformer/ops/dropout.h"

namespace eformer::nn {

Dropout::Dropout(float p) : Module("Dropout"), p_(p) {
  EF_CHECK(p_ >= 0.0f && p_ < 1.0f, ValueError, "Dropout: p = ", p_, " is outside [0, 1)");
}

std::string Dropout::describe() const { return detail::concat("Dropout(p=", p_, ")"); }

Tensor Dropout::forward(const Tensor& x) const { return dropout(x, p_, is_training()); }

}  // namespace eformer::nn
