#include "eformer/nn/feed_forward.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/dropout.h"
#include "eformer/ops/shape.h"

namespace eformer::nn {

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::GELU;
  if (name == "gelu_tanh") return Activation::GELUTanh;
  if (name == "relu") return Activation::ReLU;
  throw ValueError("activation: unknown name '" + name + "'; expected one of gelu, gelu_tanh, relu");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::GELU:
      return "gelu";
    case Activation::GELUTanh:
      return "gelu_tanh";
    case Activation::ReLU:
      return "relu";
  }
  return "?";
}

Tensor activate(const Tensor& x, Activation a) {
  switch (a) {
    case Activation::GELU:
      return gelu(x);
    case Activation::GELUTanh:
      return gelu(x, /*tanh_approximation=*/true);
    case Activation::ReLU:
      return relu(x);
  }
  return x;
}

FeedForward::FeedForward(int64_t d_model, int64_t d_ff, float dropout, Activation activation, int64_t chunks)
    : Module("FeedForward"), d_model_(d_model), d_ff_(d_ff), activation_(activation) {
  EF_CHECK(d_model_ > 0 && d_ff_ > 0, ValueError, "FeedForward: d_model = ", d_model_, " and d_ff = ", d_ff_,
           "; expected both > 0");
  EF_CHECK(dropout >= 0.0f && dropout < 1.0f, ValueError, "FeedForward: dropout = ", dropout,
           " is outside [0, 1)");
  set_chunks(chunks);
  fc1_ = register_module("fc1", std::make_shared<Linear>(d_model_, d_ff_));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(dropout));
  fc2_ = register_module("fc2", std::make_shared<Linear>(d_ff_, d_model_));
}

std::string FeedForward::describe() const {
  return detail::concat("FeedForward(d_model=", d_model_, ", d_ff=", d_ff_,
                        ", dropout=", dropout_ ? dropout_->p() : 0.0f,
                        ", activation=", activation_name(activation_), ", chunks=", chunks_, ")");
}

void FeedForward::set_chunks(int64_t chunks) {
  EF_CHECK(chunks >= 1, ValueError, "FeedForward: chunks = ", chunks, "; expected chunks >= 1");
  chunks_ = chunks;
}

Tensor FeedForward::forward(const Tensor& x) const {
  EF_CHECK(x.dim() >= 1 && x.size(-1) == d_model_, ShapeError, where(), "input ", x.describe(),
           " has last dim ", x.dim() >= 1 ? x.size(-1) : 0, "; expected d_model = ", d_model_);
  // The block's modules are captured by value, and the training flag as it is now, so a recompute in
  // backward does the same thing whatever happens to this module in between.
  const bool training = is_training();
  const float p = dropout_->p();
  const Activation act = activation_;
  auto block = [fc1 = fc1_, fc2 = fc2_, p, training, act](const Tensor& in) {
    return fc2->forward(eformer::dropout(activate(fc1->forward(in), act), p, training));
  };
  const int64_t rows = x.numel() / d_model_;
  if (chunks_ <= 1 || rows <= 1) return block(x);

  // Piece boundaries r0 with r0 * d_ff a multiple of 4, so that a piece's dropout reservation starts at
  // a whole Philox block of the unchunked one (element i uses block counter + i / 4, word i % 4).
  const int64_t align = 4 / std::gcd(d_ff_, int64_t(4));
  int64_t step = (rows + chunks_ - 1) / chunks_;
  step = (step + align - 1) / align * align;
  const bool draws = training && p > 0.0f;
  rng::Generator& gen = rng::default_generator();
  const rng::Generator::State start = gen.state();
  const bool grad_on = autograd::is_grad_enabled();

  Tensor x2 = reshape(x, {rows, d_model_});
  std::vector<Tensor> pieces;
  for (int64_t r0 = 0; r0 < rows; r0 += step) {
    const int64_t r1 = std::min(rows, r0 + step);
    Tensor piece = slice(x2, 0, r0, r1);
    if (draws) gen.set_state({start.seed, start.stream, start.counter + uint64_t(r0 * d_ff_ / 4)});
    if (grad_on) {
      pieces.push_back(
          autograd::checkpoint([block](const std::vector<Tensor>& in) { return block(in[0]); }, {piece}));
    } else {
      pieces.push_back(block(piece));
    }
  }
  // Leave the generator where the unchunked computation would have.
  if (draws) gen.set_state({start.seed, start.stream, start.counter + uint64_t(rows * d_ff_ + 3) / 4});
  Shape out_shape = x.shape();
  return reshape(cat(pieces, 0), out_shape);
}

}  // namespace eformer::nn
