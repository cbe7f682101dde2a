// The Transformer block (Vaswani et al. 2017): a self-attention sublayer (any registered
// mechanism), an optional cross-attention sublayer (the decoder of an encoder-decoder), and a
// position-wise feed-forward sublayer, each with a residual connection and a LayerNorm:
//   pre-LN (default, GPT-2):  x = x + drop(attn(ln1(x))); x = x + drop(cross(ln_cross(x), memory));
//                             x = x + drop(ffn(ln2(x)))          (the model adds a final LayerNorm)
//   post-LN (the original):   x = ln1(x + drop(attn(x))); x = ln_cross(x + drop(cross(x, memory)));
//                             x = ln2(x + drop(ffn(x)))
#pragma once
#include <functional>
#include <memory>

#include "eformer/attention/mechanism.h"
#include "eformer/models/config.h"
#include "eformer/nn/nn.h"

namespace eformer::models {

// The MechanismConfig of `choice` in a model of `config`: positions = "rotary" adds
// {"rotary": true} to a self-attention's options (unless they set "rotary" themselves).
attention::MechanismConfig mechanism_config(const ModelConfig& config, const AttentionChoice& choice,
                                            bool causal, bool cross);

class TransformerBlock : public nn::Module {
 public:
  // Sizes, dropout, pre_ln, activation and ffn_chunks from `config`; `cross_attn` may be null.
  TransformerBlock(const ModelConfig& config, std::shared_ptr<attention::Mechanism> self_attn,
                   std::shared_ptr<attention::Mechanism> cross_attn = nullptr);
  std::string describe() const override;

  // x [B, N, D]; key_mask Bool [B, N] for the self-attention; memory [B, M, D] and memory_mask
  // Bool [B, M] for the cross-attention (required when the block has one).
  Tensor forward(const Tensor& x, const Tensor& key_mask = {}, const Tensor& memory = {},
                 const Tensor& memory_mask = {}) const;
  // Streaming: x_t [B, T, D] through the self-attention's step (the state from self_attn()->start).
  Tensor step(const Tensor& x_t, attention::RecurrentState& state, const Tensor& memory = {},
              const Tensor& memory_mask = {}) const;

  const std::shared_ptr<attention::Mechanism>& self_attn() const { return attn_; }
  const std::shared_ptr<attention::Mechanism>& cross_attn() const { return cross_; }
  bool pre_ln() const { return pre_ln_; }

 private:
  template <class Mix>
  Tensor run(const Tensor& x, Mix&& mix, const Tensor& memory, const Tensor& memory_mask) const;
  Tensor sublayer(const Tensor& x, const nn::LayerNorm& ln,
                  const std::function<Tensor(const Tensor&)>& f) const;

  bool pre_ln_;
  std::shared_ptr<attention::Mechanism> attn_, cross_;
  std::shared_ptr<nn::LayerNorm> ln1_, ln_cross_, ln2_;
  std::shared_ptr<nn::FeedForward> ffn_;
  std::shared_ptr<nn::Dropout> dropout_;
};

}  // namespace eformer::models
