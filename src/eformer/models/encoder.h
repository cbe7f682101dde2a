// Bidirectional models: the Encoder (embedding + blocks without a causal mask + final LayerNorm
// for pre-LN), the SequenceClassifier on top of it (mean over the real tokens -> Linear), and the
// EncoderDecoder (Vaswani et al. 2017): an Encoder over the source, decoder blocks with causal
// self-attention and cross-attention over the encoder output, and an LM head. Source and target
// share the token embedding (and its positions).
#pragma once
#include <memory>

#include "eformer/models/block.h"
#include "eformer/models/config.h"
#include "eformer/models/embedding.h"
#include "eformer/models/pooling.h"
#include "eformer/nn/nn.h"

namespace eformer::models {

// Names: embed.*, blocks.<i>.*, ln_f.* (pre-LN only).
class Encoder : public nn::Module {
 public:
  // n_layers blocks with the mechanisms of attention_for_layer (arch "encoder") or config.attention
  // (the encoder of an "encoder-decoder"), never causal.
  Encoder(const ModelConfig& config, int64_t n_layers);
  std::string describe() const override;
  // ids Int64 [B, N] (N <= max_len); key_mask Bool [B, N], true = a real token (undefined: all
  // real) -> [B, N, d_model].
  Tensor forward(const Tensor& ids, const Tensor& key_mask = {}) const;
  const std::shared_ptr<TokenEmbedding>& embedding() const { return embed_; }

 private:
  ModelConfig config_;
  std::shared_ptr<TokenEmbedding> embed_;
  std::shared_ptr<nn::ModuleList> blocks_;
  std::shared_ptr<nn::LayerNorm> ln_f_;
};

// arch "encoder". Names: encoder.*, pool.* (pooling "pma"), classifier.{weight, bias}.
class SequenceClassifier : public nn::Module {
 public:
  explicit SequenceClassifier(const ModelConfig& config);
  std::string describe() const override;
  const ModelConfig& config() const { return config_; }
  // ids [B, N], key_mask Bool [B, N] -> class logits [B, num_classes], from the encoder output pooled
  // over the real tokens: their mean (pooling "mean"; a row with none pools to 0) or PMA (pooling "pma").
  Tensor forward(const Tensor& ids, const Tensor& key_mask = {}) const;
  // Mean cross-entropy against labels Int64 [B].
  Tensor loss(const Tensor& ids, const Tensor& labels, const Tensor& key_mask = {}) const;

 private:
  ModelConfig config_;
  std::shared_ptr<Encoder> encoder_;
  std::shared_ptr<PmaPooling> pma_;  // pooling "pma"
  std::shared_ptr<nn::Linear> classifier_;
};

// arch "encoder-decoder": n_encoder_layers encoder blocks, n_layers decoder blocks. Names:
// encoder.*, decoder.<i>.{ln1, attn, ln_cross, cross_attn, ln2, ffn}.*, ln_f.* (pre-LN),
// head.weight (untied). The decoder uses encoder.embed.
class EncoderDecoder : public nn::Module {
 public:
  explicit EncoderDecoder(const ModelConfig& config);
  std::string describe() const override;
  const ModelConfig& config() const { return config_; }
  // The encoder output [B, M, D] of src [B, M].
  Tensor encode(const Tensor& src, const Tensor& src_mask = {}) const;
  // Decoder logits [B, N, vocab] of tgt [B, N] given the encoder output.
  Tensor decode(const Tensor& tgt, const Tensor& memory, const Tensor& src_mask = {}) const;
  Tensor forward(const Tensor& src, const Tensor& tgt, const Tensor& src_mask = {}) const;
  // Mean cross-entropy of forward(src, tgt_in) against tgt_out [B, N] (-100 is ignored).
  Tensor loss(const Tensor& src, const Tensor& tgt_in, const Tensor& tgt_out,
              const Tensor& src_mask = {}) const;

 private:
  ModelConfig config_;
  std::shared_ptr<Encoder> encoder_;
  std::shared_ptr<nn::ModuleList> decoder_;
  std::shared_ptr<nn::LayerNorm> ln_f_;
  std::shared_ptr<nn::Linear> head_;
};

}  // namespace eformer::models
