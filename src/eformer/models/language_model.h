// The causal language model: token embedding + positions, n_layers Transformer blocks (each
// with its configured mechanism, causal), final LayerNorm (pre-LN), LM head (optionally tied).
#pragma once
#include <memory>

#include "eformer/attention/mechanism.h"
#include "eformer/models/config.h"
#include "eformer/nn/module.h"

namespace eformer::models {

// Streaming state of a whole model: one RecurrentState per layer plus the position.
struct DecodeState {
  std::vector<std::unique_ptr<attention::RecurrentState>> layers;
  int64_t position = 0;
};

class LanguageModel : public nn::Module {
 public:
  explicit LanguageModel(const ModelConfig& config);
  const ModelConfig& config() const { return config_; }
  // ids Int64 [B, N] (N <= max_len) -> logits [B, N, vocab].
  Tensor forward(const Tensor& ids);
  // Mean cross-entropy of next-token prediction: logits of ids vs targets, both [B, N].
  Tensor loss(const Tensor& ids, const Tensor& targets);
  // Incremental decoding: feed T new tokens [B, T], get their logits [B, T, vocab]; equals the
  // corresponding rows of forward() on the whole sequence.
  DecodeState start_decoding(int64_t batch);
  Tensor step(DecodeState& state, const Tensor& ids);

 private:
  ModelConfig config_;
};

}  // namespace eformer::models
