// LayerNorm over the last dim (torch.nn.LayerNorm(d)): weight initialised to ones, bias to zeros.
#pragma once
#include <cstdint>

#include "eformer/nn/module.h"

namespace eformer::nn {

class LayerNorm : public Module {
 public:
  // d > 0 and eps > 0 (ValueError otherwise).
  explicit LayerNorm(int64_t d, float eps = 1e-5f);
  std::string describe() const override;

  // x [..., d] -> [..., d]; a last dim other than d is a ShapeError.
  Tensor forward(const Tensor& x) const;

  int64_t dim() const { return d_; }
  float eps() const { return eps_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  int64_t d_;
  float eps_;
  Tensor weight_, bias_;
};

}  // namespace eformer::nn
