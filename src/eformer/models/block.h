// The Transformer block (Vaswani et al. 2017): a self-attention sublayer (any registered
// mechanism), an optional cross-attention sublayer (the decoder of an encoder-decoder), and a
// position-wise feed-forward sublayer, each with a residual connection and a LayerNorm:
//   pre-LN (default, GPT-2):  x = x + A(x); x = x + C(x, memory); x = x + F(x)
//        with the branches    A(x) = drop(attn(ln1(x))), C = drop(cross(ln_cross(x), memory)),
//                             F(x) = drop(ffn(ln2(x)))      (the model adds a final LayerNorm)
//   post-LN (the original):   x = ln1(x + drop(attn(x))); x = ln_cross(x + drop(cross(x, memory)));
//                             x = ln2(x + drop(ffn(x)))
// The branches are public so that block policies can compose them differently. Policies
// (ModelConfig::block): "plain" keeps every activation; "recompute" runs the block under
// autograd::checkpoint (only its input is kept; the backward rebuilds the rest, every dropout and
// attention-dropout draw replayed bit for bit); "reversible" couples the blocks of a stack as a
// RevNet (models/reversible.h): y1 = x1 + G(x2), y2 = x2 + F(y1), nothing kept but the stack's
// output. run_blocks / step_blocks run a stack under its policy.
#pragma once
#include <functional>
#include <memory>

#include "eformer/attention/mechanism.h"
#include "eformer/attention/relative.h"
#include "eformer/models/config.h"
#include "eformer/nn/nn.h"

namespace eformer::models {

// The MechanismConfig of `choice` in a model of `config`: sizes, max_len, attention dropout, the
// position scheme, and the layer index (for messages).
attention::MechanismConfig mechanism_config(const ModelConfig& config, const AttentionChoice& choice,
                                            bool causal, bool cross, int64_t layer);

enum class BlockPolicy { Plain, Recompute, Reversible };
// "plain" | "recompute" | "reversible"; anything else is a ValueError listing those.
BlockPolicy parse_block_policy(const std::string& name);

class TransformerBlock : public nn::Module {
 public:
  // Sizes, dropout, pre_ln, activation, ffn_chunks and the block policy from `config`;
  // `cross_attn` may be null.
  TransformerBlock(const ModelConfig& config, std::shared_ptr<attention::Mechanism> self_attn,
                   std::shared_ptr<attention::Mechanism> cross_attn = nullptr);
  // A block of a model with a recurrent memory (ModelConfig::memory): Transformer-XL's relative
  // attention over [memory; x]; run with forward_with_memory. Policy "plain" or "recompute".
  TransformerBlock(const ModelConfig& config, std::shared_ptr<attention::RelativeAttention> relative_attn);
  std::string describe() const override;

  // x [B, N, D] with this layer's memory [B, M, D] (its input hidden states of earlier segments;
  // undefined or M = 0: none) as extra keys and values, stop-gradient. Relative-attention blocks only.
  Tensor forward_with_memory(const Tensor& x, const Tensor& memory) const;

  // x [B, N, D]; key_mask Bool [B, N] for the self-attention; memory [B, M, D] and memory_mask
  // Bool [B, M] for the cross-attention (required when the block has one). A reversible block has
  // no forward of its own (ValueError): its stack runs through run_blocks.
  Tensor forward(const Tensor& x, const Tensor& key_mask = {}, const Tensor& memory = {},
                 const Tensor& memory_mask = {}) const;
  // Streaming: x_t [B, T, D] through the self-attention's step (the state from self_attn()->start).
  Tensor step(const Tensor& x_t, attention::RecurrentState& state, const Tensor& memory = {},
              const Tensor& memory_mask = {}) const;

  // The branches (without the residual; pre-LN includes the LayerNorm, post-LN does not).
  Tensor attention_branch(const Tensor& x, const Tensor& key_mask = {}) const;
  Tensor cross_branch(const Tensor& x, const Tensor& memory, const Tensor& memory_mask = {}) const;
  Tensor ffn_branch(const Tensor& x) const;
  // The self-attention branch of a streaming step (the state from self_attn()->start).
  Tensor attention_step_branch(const Tensor& x, attention::RecurrentState& state) const;
  // Everything before the feed-forward as one branch of x (pre-LN): G(x) = A(x) + C(x + A(x), memory)
  // with A = `attend` (attention_branch or attention_step_branch), C only with cross-attention; a
  // pre-LN block is h = x + G(x), out = h + F(h). The reversible coupling's first branch.
  Tensor mixing_branch(const Tensor& x, const std::function<Tensor(const Tensor&)>& attend, const Tensor& memory,
                       const Tensor& memory_mask) const;

  // The self-attention mechanism; null in a relative-attention block (relative_attn() instead).
  const std::shared_ptr<attention::Mechanism>& self_attn() const { return attn_; }
  const std::shared_ptr<attention::RelativeAttention>& relative_attn() const { return relative_; }
  const std::shared_ptr<attention::Mechanism>& cross_attn() const { return cross_; }
  bool pre_ln() const { return pre_ln_; }
  BlockPolicy policy() const { return policy_; }

 private:
  // The plain composition of the branches, with `attend` as the self-attention branch.
  Tensor compose(const Tensor& x, const std::function<Tensor(const Tensor&)>& attend, const Tensor& memory,
                 const Tensor& memory_mask) const;
  Tensor residual(const Tensor& x, const Tensor& branch, const nn::LayerNorm& ln) const;

  bool pre_ln_;
  BlockPolicy policy_;
  std::shared_ptr<attention::Mechanism> attn_, cross_;
  std::shared_ptr<attention::RelativeAttention> relative_;
  std::shared_ptr<nn::LayerNorm> ln1_, ln_cross_, ln2_;
  std::shared_ptr<nn::FeedForward> ffn_;
  std::shared_ptr<nn::Dropout> dropout_;
};

// Which stack build_blocks makes.
enum class Stack {
  Decoder,       // causal self-attention, the mechanism of attention_for_layer
  Encoder,       // bidirectional self-attention, attention_for_layer (arch "encoder") or attention
  CrossDecoder,  // causal self-attention + cross-attention (config.cross_attention)
};
// n_layers blocks of `stack`; each mechanism is built (and its capabilities checked) with its
// layer index, so a wrong combination fails here with a sentence naming the layer.
std::shared_ptr<nn::ModuleList> build_blocks(const ModelConfig& config, int64_t n_layers, Stack stack);

// x [B, N, D] through the TransformerBlocks of `blocks` under their policy (arguments as
// TransformerBlock::forward): one block after another, or the whole stack as one reversible node.
Tensor run_blocks(const nn::ModuleList& blocks, const Tensor& x, const Tensor& key_mask = {},
                  const Tensor& memory = {}, const Tensor& memory_mask = {});
// The streaming counterpart: x_t [B, T, D], one state per block (from each self_attn()->start).
Tensor step_blocks(const nn::ModuleList& blocks, const Tensor& x_t,
                   std::vector<std::unique_ptr<attention::RecurrentState>>& states, const Tensor& memory = {},
                   const Tensor& memory_mask = {});

}  // namespace eformer::models
