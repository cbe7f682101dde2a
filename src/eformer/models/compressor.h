// The compression functions f_c of the Compressive Transformer (Rae et al. 2020, sec. 3.1): n
// memories evicted from a layer's memory, [B, n, D] with n a multiple of the rate c, become n / c
// compressed memories [B, n / c, D] (m = n / c below):
//   max_pool, mean_pool  over windows of c consecutive memories (kernel = stride = c)
//   conv                 a 1-D convolution with kernel = stride = c, D -> D channels (+ bias):
//                        out_t = W [x_{ct}; ...; x_{ct+c-1}] + b, a Linear of the c D window
//   dilated_conv         a 1-D convolution with kernel c, dilation m, stride 1, no padding, D -> D
//                        channels (+ bias): out_t = sum_j W_j x_{t + j m} + b, t < m. The paper names
//                        the function without its sizes; these keep what `conv` has (c taps, every
//                        memory read exactly once, n / c outputs, no padding, same parameters) and
//                        spread each output's taps over the whole evicted block instead of c
//                        neighbours. torch: conv1d(x^T, W [D, D, c], b, stride=1, dilation=m).
//   most_used            no parameters: the memories are sorted by their usage (the attention they
//                        received, per batch row) and the m most used kept, in their order of position;
//                        ties go to the older memory (the lower position).
// conv and dilated_conv are trained by the attention-reconstruction loss (models/language_model.cpp).
#pragma once
#include <memory>
#include <string>

#include "eformer/nn/linear.h"
#include "eformer/nn/module.h"

namespace eformer::models {

class Compressor : public nn::Module {
 public:
  // kind: max_pool | mean_pool | conv | dilated_conv | most_used (ValueError otherwise); rate >= 1.
  Compressor(const std::string& kind, int64_t d_model, int64_t rate);
  std::string describe() const override;
  // x [B, n, D], n % rate == 0 (ShapeError otherwise) -> [B, n / rate, D]. usage [B, n]: how much each
  // memory was attended, needed by most_used (ValueError without it), ignored by the others.
  Tensor forward(const Tensor& x, const Tensor& usage = {}) const;
  int64_t rate() const { return rate_; }
  const std::string& kind() const { return kind_; }
  bool needs_usage() const { return kind_ == "most_used"; }

 private:
  Tensor most_used(const Tensor& x, const Tensor& usage) const;
  std::string kind_;
  int64_t d_model_, rate_;
  std::shared_ptr<nn::Linear> conv_;  // conv and dilated_conv: the c taps flattened, [D, c D]
};

}  // namespace eformer::models
