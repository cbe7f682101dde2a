// The position-wise feed-forward block of a Transformer (Vaswani et al. 2017):
//   FeedForward(x) = fc2(dropout(act(fc1(x)))),  fc1: d_model -> d_ff, fc2: d_ff -> d_model.
// With chunks > 1 (Reformer's chunked feed-forward, Kitaev et al. 2020, sec. 3) the positions are
// processed in `chunks` pieces, each under autograd::checkpoint while grad is on, so the
// [positions, d_ff] hidden is alive for one piece at a time, in forward and in backward. The block is
// position-wise, so the pieces are ranges of the flattened positions [B * N] (the sequence dim with
// the batch folded in): each piece is a contiguous view of x, and its hidden a contiguous range of
// the unchunked hidden. Each piece's dropout draws start at that range's offset in the unchunked
// reservation (piece boundaries are aligned so the offset is a whole Philox block), so the dropout
// masks are those of the unchunked computation, and results and gradients equal it up to the GEMM's
// rounding order: bit for bit wherever the GEMM computes a row the same way whatever the number of
// rows (oneDNN does for large pieces; it may block a product of few rows differently), and always in
// exact arithmetic. The weight gradients are sums over pieces.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "eformer/nn/dropout.h"
#include "eformer/nn/linear.h"
#include "eformer/nn/module.h"

namespace eformer::nn {

enum class Activation { GELU, GELUTanh, ReLU };
// "gelu" | "gelu_tanh" | "relu"; anything else is a ValueError listing those.
Activation parse_activation(const std::string& name);
const char* activation_name(Activation a);
Tensor activate(const Tensor& x, Activation a);

class FeedForward : public Module {
 public:
  // d_model, d_ff > 0, dropout in [0, 1), chunks >= 1 (ValueError otherwise).
  FeedForward(int64_t d_model, int64_t d_ff, float dropout = 0.0f, Activation activation = Activation::GELU,
              int64_t chunks = 1);
  std::string describe() const override;

  // x [..., d_model] -> [..., d_model]; a last dim other than d_model is a ShapeError.
  Tensor forward(const Tensor& x) const;

  int64_t chunks() const { return chunks_; }
  void set_chunks(int64_t chunks);  // >= 1
  int64_t d_model() const { return d_model_; }
  int64_t d_ff() const { return d_ff_; }
  Activation activation() const { return activation_; }
  const std::shared_ptr<Linear>& fc1() const { return fc1_; }
  const std::shared_ptr<Linear>& fc2() const { return fc2_; }
  const std::shared_ptr<Dropout>& dropout() const { return dropout_; }

 private:
  int64_t d_model_, d_ff_;
  Activation activation_;
  int64_t chunks_ = 1;
  std::shared_ptr<Linear> fc1_;
  std::shared_ptr<Dropout> dropout_;
  std::shared_ptr<Linear> fc2_;
};

}  // namespace eformer::nn
