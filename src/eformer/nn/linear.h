// Linear: y = x W^T + b (torch.nn.Linear), weight [out, in], bias [out]. The product uses GEMM's
// transposed operand, never a transposed copy of W.
#pragma once
#include <cstdint>

#include "eformer/nn/module.h"

namespace eformer::nn {

class Linear : public Module {
 public:
  // in, out > 0 (ValueError otherwise). Weight and bias are drawn from U(-1/sqrt(in), 1/sqrt(in))
  // with the default generator (torch's default init: kaiming_uniform(a=sqrt 5) gives that bound).
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  std::string describe() const override;

  // x [..., in] -> [..., out]; a last dim other than `in` is a ShapeError.
  Tensor forward(const Tensor& x) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }  // undefined without bias
  bool has_bias() const { return bias_.defined(); }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

// A float32 tensor of `shape` drawn from U(-bound, bound) with the default generator.
Tensor uniform_init(const Shape& shape, float bound);
// A float32 tensor of `shape` drawn from N(0, std^2) with the default generator.
Tensor normal_init(const Shape& shape, float std = 1.0f);

}  // namespace eformer::nn
