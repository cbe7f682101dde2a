#include "eformer/nn/linear.h"

#include <cmath>

#include "eformer/core/rng.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/shape.h"

namespace eformer::nn {

Tensor uniform_init(const Shape& shape, float bound) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  rng::uniform_(p, t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = (2.0f * p[i] - 1.0f) * bound;
  return t;
}

Tensor normal_init(const Shape& shape, float std) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  rng::normal_(p, t.numel());
  if (std != 1.0f)
    for (int64_t i = 0; i < t.numel(); ++i) p[i] *= std;
  return t;
}

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : Module("Linear"), in_(in_features), out_(out_features) {
  EF_CHECK(in_ > 0 && out_ > 0, ValueError, "Linear: in_features = ", in_, " and out_features = ", out_,
           "; expected both > 0");
  const float bound = 1.0f / std::sqrt(float(in_));
  weight_ = register_parameter("weight", uniform_init({out_, in_}, bound));
  if (bias) bias_ = register_parameter("bias", uniform_init({out_}, bound));
}

std::string Linear::describe() const {
  return detail::concat("Linear(in=", in_, ", out=", out_, ", bias=", has_bias() ? "true" : "false", ")");
}

Tensor Linear::forward(const Tensor& x) const {
  EF_CHECK(x.dim() >= 1 && x.size(-1) == in_, ShapeError, where(), "input ", x.describe(), " has last dim ",
           x.dim() >= 1 ? x.size(-1) : 0, "; expected ", in_);
  // matmul shares a 2-D operand across the batch dims of the other.
  Tensor x2 = x.dim() == 1 ? unsqueeze(x, 0) : x;
  Tensor y = matmul(x2, weight_, /*trans_a=*/false, /*trans_b=*/true);
  if (has_bias()) y = add(y, bias_);
  return x.dim() == 1 ? squeeze(y, 0) : y;
}

}  // namespace eformer::nn
