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

// The recurrent memory of a model with ModelConfig::memory (Transformer-XL, Dai et al. 2019, sec.
// 3.2): per layer, the input hidden states of the last mem_len tokens before the current segment,
// [B, m, D] with m <= mem_len, stop-gradient. Empty `layers`: no memory yet (a new stream).
// A Compressive Transformer (Rae et al. 2020) also keeps `compressed`: per layer [B, c, D] with
// c <= cmem_len, the memories evicted from `layers` compressed at compression_rate; the segment
// attends over [compressed; layers; itself]. After each forward, `reconstruction` holds the
// attention-reconstruction loss of the memories evicted by it (sum over layers; only the
// compressors get its gradient), undefined when nothing was evicted.
struct SegmentMemory {
  std::vector<Tensor> layers;
  std::vector<Tensor> compressed;
  int64_t mem_len = 0;   // how many to keep: the config's, or another length at evaluation
  int64_t cmem_len = 0;  // compressive: how many compressed states to keep
  Tensor reconstruction;
  int64_t length() const { return layers.empty() ? 0 : layers[0].size(1); }
  int64_t compressed_length() const { return compressed.empty() ? 0 : compressed[0].size(1); }
  void clear() {
    layers.clear();
    compressed.clear();
    reconstruction = Tensor();
  }
};

// Streaming state of a whole model: one RecurrentState per layer plus the position. A model with
// a memory streams through `memory` and `segment` (per layer, the inputs of the tokens of the
// current, unfinished segment) instead, so that step() computes what forward() does segment by
// segment: when `segment` reaches max_len tokens it moves into the memory.
struct DecodeState {
  std::vector<std::unique_ptr<attention::RecurrentState>> layers;
  int64_t position = 0;
  SegmentMemory memory;
  std::vector<Tensor> segment;
};

// Parameter names: embed.tokens.weight, embed.positions.weight (learned), blocks.<i>.{ln1, attn,
// ln2, ffn}.*, ln_f.* (pre-LN only), head.weight (untied only; tied logits = h E^T),
// compressors.<i>.conv.* (compressive memory with a conv or dilated_conv compression).
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
  // With a memory (config().memory.kind != "none"): the segment ids [B, N] (N <= max_len) attend
  // over `memory` and themselves; the memory then holds the last memory.mem_len input states of
  // each layer (the segment's appended, stop-gradient). ValueError for a model without a memory.
  bool has_memory() const { return config_.memory.kind != "none"; }
  SegmentMemory start_memory(int64_t mem_len = 0) const;  // empty; mem_len 0 = the config's
  Tensor forward(const Tensor& ids, SegmentMemory& memory);
  Tensor loss(const Tensor& ids, const Tensor& targets, SegmentMemory& memory,
              Reduction reduction = Reduction::Mean);

  // Incremental decoding: feed T new tokens [B, T], get their logits [B, T, vocab]; equals the
  // corresponding rows of forward() on the whole sequence. Learned positions need
  // state.position + T <= max_len (IndexError otherwise); sinusoidal and rotary do not. A model
  // with a memory equals forward() over consecutive segments of max_len with the memory carried,
  // at O(mem_len + max_len) per token however long the stream; mem_len 0 = the config's.
  DecodeState start_decoding(int64_t batch, int64_t mem_len = 0);
  Tensor step(DecodeState& state, const Tensor& ids);
  // How step() streams, one line for the model: "flash: native" per distinct mechanism, e.g.
  // "layers 0-3 flash: native" or "layer 0 flash: native; layer 1 x: fallback (...)".
  std::string streaming_summary() const;

  const std::shared_ptr<TokenEmbedding>& embedding() const { return embed_; }
  const std::shared_ptr<nn::ModuleList>& blocks() const { return blocks_; }
  TransformerBlock& block(int64_t i) const { return blocks_->get<TransformerBlock>(i); }

 private:
  Tensor hidden(const Tensor& ids);                // embedding and blocks: [B, N, D]
  Tensor hidden(const Tensor& ids, SegmentMemory& memory);  // the same with a memory (updated)
  void check_ids(const Tensor& ids) const;
  Tensor step_with_memory(DecodeState& state, const Tensor& ids);
  // Layer i's extra keys: [compressed; memory] of `memory` (undefined when both are empty).
  Tensor memory_context(const SegmentMemory& memory, int64_t layer) const;
  // Moves the states `inputs` (per layer [B, T, D]) into the memory: the last mem_len are kept, the
  // evicted ones (whole windows of the rate) compressed (compressive), the reconstruction loss set.
  void remember(SegmentMemory& memory, const std::vector<Tensor>& inputs);
  Tensor final_norm(const Tensor& h) const;        // the final LayerNorm (pre-LN), else h
  Tensor head(const Tensor& h) const;              // final LayerNorm (pre-LN) and LM head
  void check_targets(const Tensor& ids, const Tensor& targets) const;
  // The loss of hidden states h [B, N, D] against targets [B, N]: final LayerNorm, head, loss in chunks.
  Tensor head_loss(const Tensor& h, const Tensor& targets, Reduction reduction) const;
  const Tensor& head_weight() const;               // [vocab, D]: the head's, or the tied embedding's

  ModelConfig config_;
  std::shared_ptr<TokenEmbedding> embed_;
  std::shared_ptr<nn::ModuleList> blocks_;
  std::shared_ptr<nn::LayerNorm> ln_f_;  // pre-LN only
  std::shared_ptr<nn::Linear> head_;     // untied only
  std::shared_ptr<nn::ModuleList> compressors_;  // compressive memory only: one Compressor per layer
};

// The LM head shared by the decoder models: logits = h W^T with W the head's weight, or the
// token embedding's when tied.
Tensor lm_logits(const Tensor& h, const TokenEmbedding& embed, const nn::Linear* head);

}  // namespace eformer::models
