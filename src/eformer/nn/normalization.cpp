#include "eformer/nn/normalization.h"

#include "eformer/ops/layer_norm.h"

namespace eformer::nn {

LayerNorm::LayerNorm(int64_t d, float eps) : Module("LayerNorm"), d_(d), eps_(eps) {
  EF_CHECK(d_ > 0, ValueError, "LayerNorm: d = ", d_, "; expected d > 0");
  EF_CHECK(eps_ > 0.0f, ValueError, "LayerNorm: eps = ", eps_, "; expected eps > 0");
  weight_ = register_parameter("weight", Tensor::full({d_}, 1.0));
  bias_ = register_parameter("bias", Tensor::zeros({d_}));
}

std::string LayerNorm::describe() const { return detail::concat("LayerNorm(d=", d_, ", eps=", eps_, ")"); }

Tensor LayerNorm::forward(const Tensor& x) const {
  EF_CHECK(x.dim() >= 1 && x.size(-1) == d_, ShapeError, where(), "input ", x.describe(), " has last dim ",
           x.dim() >= 1 ? x.size(-1) : 0, "; expected ", d_);
  return layer_norm(x, {d_}, weight_, bias_, eps_);
}

}  // namespace eformer::nn
