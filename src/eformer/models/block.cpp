#include "eformer/models/block.h"

#include "eformer/attention/registry.h"
#include "eformer/autograd/autograd.h"
#include "eformer/ops/elementwise.h"

namespace eformer::models {

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
    : Module("TransformerBlock"), pre_ln_(c.pre_ln), recompute_(c.block == "recompute") {
  EF_CHECK(self_attn != nullptr, ValueError, "TransformerBlock: no self-attention mechanism");
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

std::string TransformerBlock::describe() const {
  return detail::concat("TransformerBlock(", pre_ln_ ? "pre-LN" : "post-LN", recompute_ ? ", recompute" : "",
                        ", attn=", attn_->describe(),
                        cross_ ? ", cross_attn=" + cross_->describe() : std::string(), ")");
}

Tensor TransformerBlock::attention_branch(const Tensor& x, const Tensor& key_mask) const {
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
  if (!recompute_) return plain({x, memory});
  // Parameters are captured by `plain`; checkpoint replays the generator, so dropout matches.
  return autograd::checkpoint(plain, {x, memory});
}

Tensor TransformerBlock::step(const Tensor& x_t, attention::RecurrentState& state, const Tensor& memory,
                              const Tensor& memory_mask) const {
  auto attend = [&](const Tensor& y) {
    return dropout_->forward(attn_->step(pre_ln_ ? ln1_->forward(y) : y, state));
  };
  return compose(x_t, attend, memory, memory_mask);
}

std::shared_ptr<nn::ModuleList> build_blocks(const ModelConfig& c, int64_t n_layers, Stack stack) {
  auto blocks = std::make_shared<nn::ModuleList>();
  for (int64_t i = 0; i < n_layers; ++i) {
    const bool per_layer = stack != Stack::Encoder || c.arch == "encoder";
    const AttentionChoice& choice = per_layer ? attention_for_layer(c, i) : c.attention;
    const bool causal = stack != Stack::Encoder;
    auto self = attention::make_mechanism(choice.kind, mechanism_config(c, choice, causal, false, i));
    std::shared_ptr<attention::Mechanism> cross;
    if (stack == Stack::CrossDecoder)
      cross = attention::make_mechanism(c.cross_attention.kind,
                                        mechanism_config(c, c.cross_attention, false, true, i));
    blocks->push_back(std::make_shared<TransformerBlock>(c, std::move(self), std::move(cross)));
  }
  return blocks;
}

}  // namespace eformer::models
