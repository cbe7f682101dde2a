#include "eformer/models/block.h"

#include <map>

#include "eformer/attention/registry.h"
#include "eformer/autograd/autograd.h"
#include "eformer/models/reversible.h"
#include "eformer/ops/elementwise.h"

namespace eformer::models {

BlockPolicy parse_block_policy(const std::string& name) {
  if (name == "plain") return BlockPolicy::Plain;
  if (name == "recompute") return BlockPolicy::Recompute;
  if (name == "reversible") return BlockPolicy::Reversible;
  throw ValueError("block policy '" + name + "' is unknown; expected one of 'plain', 'recompute', 'reversible'");
}

attention::MechanismConfig mechanism_config(const ModelConfig& config, const AttentionChoice& choice,
                                            bool causal, bool cross, int64_t layer) {
  attention::MechanismConfig m;
  m.d_model = config.d_model;
  m.n_heads = config.n_heads;
  m.causal = causal;
  m.cross = cross;
  m.max_len = config.max_len;
  m.layer = layer;
  m.dropout = config.attention_dropout;
  m.positions = config.positions;
  m.options = choice.options;
  return m;
}

TransformerBlock::TransformerBlock(const ModelConfig& c, std::shared_ptr<attention::Mechanism> self_attn,
                                   std::shared_ptr<attention::Mechanism> cross_attn)
    : Module("TransformerBlock"), pre_ln_(c.pre_ln), policy_(parse_block_policy(c.block)) {
  EF_CHECK(self_attn != nullptr, ValueError, "TransformerBlock: no self-attention mechanism");
  EF_CHECK(policy_ != BlockPolicy::Reversible || pre_ln_, ValueError,
           "TransformerBlock: block = 'reversible' needs pre_ln = true (a post-LN block normalizes after the "
           "residual, which cannot be inverted)");
  ln1_ = register_module("ln1", std::make_shared<nn::LayerNorm>(c.d_model));
  attn_ = register_module("attn", std::move(self_attn));
  if (cross_attn) {
    ln_cross_ = register_module("ln_cross", std::make_shared<nn::LayerNorm>(c.d_model));
    cross_ = register_module("cross_attn", std::move(cross_attn));
  }
  ln2_ = register_module("ln2", std::make_shared<nn::LayerNorm>(c.d_model));
  ffn_ = register_module("ffn",
                         std::make_shared<nn::FeedForward>(c.d_model, c.d_ff, c.dropout,
                                                           nn::parse_activation(c.activation), c.ffn_chunks));
  dropout_ = register_module("dropout", std::make_shared<nn::Dropout>(c.dropout));
}

TransformerBlock::TransformerBlock(const ModelConfig& c, std::shared_ptr<attention::RelativeAttention> relative_attn)
    : Module("TransformerBlock"), pre_ln_(c.pre_ln), policy_(parse_block_policy(c.block)) {
  EF_CHECK(relative_attn != nullptr, ValueError, "TransformerBlock: no relative attention");
  EF_CHECK(policy_ != BlockPolicy::Reversible, ValueError,
           "TransformerBlock: block = 'reversible' cannot carry a memory; use 'plain' or 'recompute'");
  ln1_ = register_module("ln1", std::make_shared<nn::LayerNorm>(c.d_model));
  relative_ = register_module("attn", std::move(relative_attn));
  ln2_ = register_module("ln2", std::make_shared<nn::LayerNorm>(c.d_model));
  ffn_ = register_module("ffn",
                         std::make_shared<nn::FeedForward>(c.d_model, c.d_ff, c.dropout,
                                                           nn::parse_activation(c.activation), c.ffn_chunks));
  dropout_ = register_module("dropout", std::make_shared<nn::Dropout>(c.dropout));
}

Tensor TransformerBlock::forward_with_memory(const Tensor& x, const Tensor& memory) const {
  EF_CHECK(relative_ != nullptr, ValueError, where(), "forward_with_memory needs a relative-attention block");
  // The memory is the layer's input, so it goes through the same LayerNorm (pre-LN) as x; LayerNorm
  // is per token, so ln1([memory; x]) = [ln1(memory); ln1(x)].
  auto plain = [this](const std::vector<Tensor>& in) {
    const Tensor& m = in[1];
    auto attend = [&](const Tensor& y) {
      Tensor mem = m.defined() && pre_ln_ ? ln1_->forward(m) : m;
      return dropout_->forward(relative_->forward(pre_ln_ ? ln1_->forward(y) : y, mem));
    };
    return compose(in[0], attend, {}, {});
  };
  const Tensor mem = memory.defined() ? memory.detach() : memory;
  if (policy_ == BlockPolicy::Plain) return plain({x, mem});
  return autograd::checkpoint(plain, {x, mem});
}

std::string TransformerBlock::describe() const {
  if (relative_) return detail::concat("TransformerBlock(", pre_ln_ ? "pre-LN" : "post-LN",
                                       policy_ == BlockPolicy::Recompute ? ", recompute" : "",
                                       ", attn=", relative_->describe(), ")");
  return detail::concat("TransformerBlock(", pre_ln_ ? "pre-LN" : "post-LN",
                        policy_ == BlockPolicy::Recompute    ? ", recompute"
                        : policy_ == BlockPolicy::Reversible ? ", reversible"
                                                             : "",
                        ", attn=", attn_->describe(),
                        cross_ ? ", cross_attn=" + cross_->describe() : std::string(), ")");
}

Tensor TransformerBlock::attention_branch(const Tensor& x, const Tensor& key_mask) const {
  EF_CHECK(attn_ != nullptr, ValueError, where(), "a relative-attention block runs with forward_with_memory");
  return dropout_->forward(attn_->forward(pre_ln_ ? ln1_->forward(x) : x, {}, key_mask));
}

Tensor TransformerBlock::cross_branch(const Tensor& x, const Tensor& memory,
                                      const Tensor& memory_mask) const {
  EF_CHECK(cross_ != nullptr, ValueError, where(), "this block has no cross-attention");
  EF_CHECK(memory.defined(), ValueError, where(), "the cross-attention sublayer needs a memory");
  return dropout_->forward(cross_->forward(pre_ln_ ? ln_cross_->forward(x) : x, memory, memory_mask));
}

Tensor TransformerBlock::ffn_branch(const Tensor& x) const {
  return dropout_->forward(ffn_->forward(pre_ln_ ? ln2_->forward(x) : x));
}

Tensor TransformerBlock::attention_step_branch(const Tensor& x, attention::RecurrentState& state) const {
  EF_CHECK(attn_ != nullptr, ValueError, where(), "a relative-attention block streams through its model's memory");
  return dropout_->forward(attn_->step(pre_ln_ ? ln1_->forward(x) : x, state));
}

Tensor TransformerBlock::mixing_branch(const Tensor& x, const std::function<Tensor(const Tensor&)>& attend,
                                       const Tensor& memory, const Tensor& memory_mask) const {
  Tensor a = attend(x);
  if (!cross_) return a;
  return add(a, cross_branch(add(x, a), memory, memory_mask));
}

// pre-LN x + branch, post-LN ln(x + branch).
Tensor TransformerBlock::residual(const Tensor& x, const Tensor& branch, const nn::LayerNorm& ln) const {
  return pre_ln_ ? add(x, branch) : ln.forward(add(x, branch));
}

Tensor TransformerBlock::compose(const Tensor& x, const std::function<Tensor(const Tensor&)>& attend,
                                 const Tensor& memory, const Tensor& memory_mask) const {
  Tensor h = residual(x, attend(x), *ln1_);
  if (cross_) h = residual(h, cross_branch(h, memory, memory_mask), *ln_cross_);
  return residual(h, ffn_branch(h), *ln2_);
}

Tensor TransformerBlock::forward(const Tensor& x, const Tensor& key_mask, const Tensor& memory,
                                 const Tensor& memory_mask) const {
  auto plain = [this, key_mask, memory_mask](const std::vector<Tensor>& in) {
    return compose(
        in[0], [&](const Tensor& y) { return attention_branch(y, key_mask); }, in[1], memory_mask);
  };
  EF_CHECK(policy_ != BlockPolicy::Reversible, ValueError, where(),
           "a reversible block couples with the others of its stack; run the stack with models::run_blocks");
  if (policy_ == BlockPolicy::Plain) return plain({x, memory});
  // Parameters are captured by `plain`; checkpoint replays the generator, so dropout matches.
  return autograd::checkpoint(plain, {x, memory});
}

Tensor TransformerBlock::step(const Tensor& x_t, attention::RecurrentState& state, const Tensor& memory,
                              const Tensor& memory_mask) const {
  return compose(
      x_t, [&](const Tensor& y) { return attention_step_branch(y, state); }, memory, memory_mask);
}

std::shared_ptr<nn::ModuleList> build_blocks(const ModelConfig& c, int64_t n_layers, Stack stack) {
  auto blocks = std::make_shared<nn::ModuleList>();
  if (c.memory.kind != "none" && stack == Stack::Decoder) {
    for (int64_t i = 0; i < n_layers; ++i)
      blocks->push_back(std::make_shared<TransformerBlock>(
          c, std::make_shared<attention::RelativeAttention>(c.d_model, c.n_heads, c.attention_dropout, i)));
    return blocks;
  }
  std::map<std::string, const attention::Mechanism*> first_of_kind;  // for parameters shared across layers
  for (int64_t i = 0; i < n_layers; ++i) {
    const bool per_layer = stack != Stack::Encoder || c.arch == "encoder";
    const AttentionChoice& choice = per_layer ? attention_for_layer(c, i) : c.attention;
    const bool causal = stack != Stack::Encoder;
    attention::MechanismConfig self_config = mechanism_config(c, choice, causal, false, i);
    self_config.shared_from = first_of_kind.count(choice.kind) ? first_of_kind[choice.kind] : nullptr;
    auto self = attention::make_mechanism(choice.kind, self_config);
    first_of_kind.emplace(choice.kind, self.get());
    std::shared_ptr<attention::Mechanism> cross;
    if (stack == Stack::CrossDecoder)
      cross = attention::make_mechanism(c.cross_attention.kind,
                                        mechanism_config(c, c.cross_attention, false, true, i));
    blocks->push_back(std::make_shared<TransformerBlock>(c, std::move(self), std::move(cross)));
  }
  return blocks;
}

namespace {
bool reversible(const nn::ModuleList& blocks) {
  return blocks.size() > 0 && blocks.get<TransformerBlock>(0).policy() == BlockPolicy::Reversible;
}
}  // namespace

Tensor run_blocks(const nn::ModuleList& blocks, const Tensor& x, const Tensor& key_mask, const Tensor& memory,
                  const Tensor& memory_mask) {
  if (reversible(blocks)) return reversible_forward(blocks, x, key_mask, memory, memory_mask);
  Tensor h = x;
  for (int64_t i = 0; i < blocks.size(); ++i) h = blocks.get<TransformerBlock>(i).forward(h, key_mask, memory, memory_mask);
  return h;
}

Tensor step_blocks(const nn::ModuleList& blocks, const Tensor& x_t,
                   std::vector<std::unique_ptr<attention::RecurrentState>>& states, const Tensor& memory,
                   const Tensor& memory_mask) {
  EF_CHECK(int64_t(states.size()) == blocks.size(), ValueError, "step: the state has ", states.size(),
           " layers; expected ", blocks.size(), " (use this model's start_decoding)");
  if (reversible(blocks)) return reversible_step(blocks, x_t, states, memory, memory_mask);
  Tensor h = x_t;
  for (int64_t i = 0; i < blocks.size(); ++i)
    h = blocks.get<TransformerBlock>(i).step(h, *states[size_t(i)], memory, memory_mask);
  return h;
}

}  // namespace eformer::models
