#include "eformer/models/embedding.h"

#include "eformer/autograd/autograd.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

TokenEmbedding::TokenEmbedding(const ModelConfig& c)
    : Module("TokenEmbedding"), positions_(c.positions), max_len_(c.max_len), d_model_(c.d_model) {
  tokens_ = register_module("tokens", std::make_shared<nn::Embedding>(c.vocab_size, c.d_model));
  autograd::NoGradGuard no_grad;
  copy_into(tokens_->weight(), nn::normal_init(tokens_->weight().shape(), 0.02f));
  if (positions_ == "learned") {
    learned_ = register_module("positions", std::make_shared<nn::LearnedPositions>(c.max_len, c.d_model));
    copy_into(learned_->weight(), nn::normal_init(learned_->weight().shape(), 0.02f));
  } else if (positions_ == "sinusoidal") {
    sinusoidal_ = nn::sinusoidal_positions(c.max_len, c.d_model);
  } else if (positions_ == "axial") {
    const AxialLayout a = axial_layout(c);
    axial_ = register_module("positions", std::make_shared<nn::AxialPositions>(a.shape, a.dims));
    copy_into(axial_->rows(), nn::normal_init(axial_->rows().shape(), 0.02f));
    copy_into(axial_->cols(), nn::normal_init(axial_->cols().shape(), 0.02f));
  }
  dropout_ = register_module("dropout", std::make_shared<nn::Dropout>(c.dropout));
}

std::string TokenEmbedding::describe() const {
  return detail::concat("TokenEmbedding(vocab=", tokens_->num_embeddings(), ", d_model=", d_model_,
                        ", positions=", positions_, ")");
}

Tensor TokenEmbedding::forward(const Tensor& ids, int64_t offset) const {
  EF_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::Int64, ShapeError, where(), "ids are ",
           ids.defined() ? ids.describe() : std::string("undefined"), "; expected Int64 [batch, seq]");
  const int64_t N = ids.size(1);
  Tensor x = tokens_->forward(ids);
  if (learned_) {
    EF_CHECK(offset + N <= max_len_, IndexError, where(), "positions ", offset, "..", offset + N - 1,
             " exceed max_len = ", max_len_, " (learned positions)");
    x = learned_->forward(x, offset);
  } else if (axial_) {
    x = axial_->forward(x, offset);
  } else if (positions_ == "sinusoidal") {
    Tensor table = offset + N <= max_len_
                       ? narrow(sinusoidal_, 0, offset, N)
                       : narrow(nn::sinusoidal_positions(offset + N, d_model_), 0, offset, N);
    x = add(x, table);
  }
  return dropout_->forward(x);
}

}  // namespace eformer::models
