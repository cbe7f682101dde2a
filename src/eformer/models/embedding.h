// The input side of every model: token embedding + absolute positions (learned, sinusoidal or
// axial; none for rotary, which the attention applies to q and k) + dropout.
#pragma once
#include <memory>

#include "eformer/models/config.h"
#include "eformer/nn/nn.h"

namespace eformer::models {

class TokenEmbedding : public nn::Module {
 public:
  // Tables are initialised N(0, 0.02^2) (GPT-2's; N(0, 1) makes a tied LM head's logits huge).
  explicit TokenEmbedding(const ModelConfig& config);
  std::string describe() const override;

  // ids Int64 [B, N] at positions offset .. offset + N - 1 -> [B, N, d_model]. Learned positions
  // need offset + N <= max_len, axial ones offset + N <= n1 n2 (IndexError otherwise).
  Tensor forward(const Tensor& ids, int64_t position_offset = 0) const;

  const std::shared_ptr<nn::Embedding>& tokens() const { return tokens_; }
  const std::string& positions_kind() const { return positions_; }

 private:
  std::string positions_;
  int64_t max_len_, d_model_;
  std::shared_ptr<nn::Embedding> tokens_;
  std::shared_ptr<nn::LearnedPositions> learned_;  // positions == "learned"
  std::shared_ptr<nn::AxialPositions> axial_;      // positions == "axial"
  Tensor sinusoidal_;                              // positions == "sinusoidal": [max_len, d], not saved
  std::shared_ptr<nn::Dropout> dropout_;
};

}  // namespace eformer::models
