// The causal language model: token embedding + positions, n_layers Transformer blocks (each
// with its configured mechanism, causal), final LayerNorm (pre-LN), LM head (optionally tied).
#pragma once
#include <memory>

#include "eformer/attention/mechanism.h"
#include "eformer/models/block.h"
#include "eformer/models/config.h"
#include "eformer/models/embedding.h"
#include "eformer/nn/module.h"
#include "eformer/ops/loss.h"

namespace eformer::models {

// Streaming state of a whole model: one RecurrentState per layer plus the position.
struct DecodeState {
  std::vector<std::unique_ptr<attention::RecurrentState>> layers;
  int64_t position = 0;
};

// Parameter names: embed.tokens.weight, embed.positions.weight (learned), blocks.<i>.{ln1, attn,
// ln2, ffn}.*, ln_f.* (pre-LN only), head.weight (untied only; tied logits = h E^T).
class LanguageModel : public nn::Module {
 public:
  // config.arch must be "decoder" (ValueError otherwise); the config is validated.
  explicit LanguageModel(const ModelConfig& config);
  std::string describe() const override;
  const ModelConfig& config() const { return config_; }
  // ids Int64 [B, N] (N <= max_len, ValueError otherwise) -> logits [B, N, vocab].
  Tensor forward(const Tensor& ids);
  // Cross-entropy of next-token prediction: logits of ids vs targets, both [B, N]; targets equal
  // to -100 are ignored; mean over the others by default. The logits are never materialized
  // whole: the head and the loss run in row chunks (linear_cross_entropy).
  Tensor loss(const Tensor& ids, const Tensor& targets, Reduction reduction = Reduction::Mean);
  // Incremental decoding: feed T new tokens [B, T], get their logits [B, T, vocab]; equals the
  // corresponding rows of forward() on the whole sequence. Learned positions need
  // state.position + T <= max_len (IndexError otherwise); sinusoidal and rotary do not.
  DecodeState start_decoding(int64_t batch);
  Tensor step(DecodeState& state, const Tensor& ids);
  // How step() streams, one line for the model: "flash: native" per distinct mechanism, e.g.
  // "layers 0-3 flash: native" or "layer 0 flash: native; layer 1 x: fallback (...)".
  std::string streaming_summary() const;

  const std::shared_ptr<TokenEmbedding>& embedding() const { return embed_; }
  const std::shared_ptr<nn::ModuleList>& blocks() const { return blocks_; }
  TransformerBlock& block(int64_t i) const { return blocks_->get<TransformerBlock>(i); }

 private:
  Tensor hidden(const Tensor& ids);                // embedding and blocks: [B, N, D]
  Tensor final_norm(const Tensor& h) const;        // the final LayerNorm (pre-LN), else h
  Tensor head(const Tensor& h) const;              // final LayerNorm (pre-LN) and LM head
  const Tensor& head_weight() const;               // [vocab, D]: the head's, or the tied embedding's

  ModelConfig config_;
  std::shared_ptr<TokenEmbedding> embed_;
  std::shared_ptr<nn::ModuleList> blocks_;
  std::shared_ptr<nn::LayerNorm> ln_f_;  // pre-LN only
  std::shared_ptr<nn::Linear> head_;     // untied only
};

// The LM head shared by the decoder models: logits = h W^T with W the head's weight, or the
// token embedding's when tied.
Tensor lm_logits(const Tensor& h, const TokenEmbedding& embed, const nn::Linear* head);

}  // namespace eformer::models
