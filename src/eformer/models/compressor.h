// The compression functions f_c of the Compressive Transformer (Rae et al. 2020, sec. 3.1): n
// memories evicted from a layer's memory, [B, n, D] with n a multiple of the rate c, become n / c
// compressed memories [B, n / c, D]:
//   max_pool, mean_pool  over windows of c consecutive memories (kernel = stride = c)
//   conv                 a 1-D convolution with kernel = stride = c, D -> D channels (+ bias):
//                        out_t = W [x_{ct}; ...; x_{ct+c-1}] + b, a Linear of the c D window
// The paper's dilated convolution and most-used functions are not implemented (the model config
// refuses them with a ValueError saying so).
#pragma once
#include <memory>
#include <string>

#include "eformer/nn/linear.h"
#include "eformer/nn/module.h"

namespace eformer::models {

class Compressor : public nn::Module {
 public:
  // kind: max_pool | mean_pool | conv (ValueError otherwise); rate >= 1.
  Compressor(const std::string& kind, int64_t d_model, int64_t rate);
  std::string describe() const override;
  // x [B, n, D], n % rate == 0 (ShapeError otherwise) -> [B, n / rate, D].
  Tensor forward(const Tensor& x) const;
  int64_t rate() const { return rate_; }

 private:
  std::string kind_;
  int64_t d_model_, rate_;
  std::shared_ptr<nn::Linear> conv_;  // conv only
};

}  // namespace eformer::models
