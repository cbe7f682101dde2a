#include "eformer/models/block.h"

#include "eformer/ops/elementwise.h"

namespace eformer::models {

attention::MechanismConfig mechanism_config(const ModelConfig& config, const AttentionChoice& choice,
                                            bool causal, bool cross) {
  attention::MechanismConfig m;
  m.d_model = config.d_model;
  m.n_heads = config.n_heads;
  m.causal = causal;
  m.cross = cross;
  m.options = choice.options;
  if (config.positions == "rotary" && !cross && !m.options.contains("rotary")) m.options["rotary"] = true;
  return m;
}

TransformerBlock::TransformerBlock(const ModelConfig& c, std::shared_ptr<attention::Mechanism> self_attn,
                                   std::shared_ptr<attention::Mechanism> cross_attn)
    : Module("TransformerBlock"), pre_ln_(c.pre_ln) {
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
  return detail::concat("TransformerBlock(", pre_ln_ ? "pre-LN" : "post-LN", ", attn=", attn_->describe(),
                        cross_ ? ", cross_attn=" + cross_->describe() : std::string(), ")");
}

// One residual sublayer: pre-LN x + drop(f(ln(x))), post-LN ln(x + drop(f(x))).
Tensor TransformerBlock::sublayer(const Tensor& x, const nn::LayerNorm& ln,
                                  const std::function<Tensor(const Tensor&)>& f) const {
  if (pre_ln_) return add(x, dropout_->forward(f(ln.forward(x))));
  return ln.forward(add(x, dropout_->forward(f(x))));
}

template <class Mix>
Tensor TransformerBlock::run(const Tensor& x, Mix&& mix, const Tensor& memory,
                             const Tensor& memory_mask) const {
  Tensor h = sublayer(x, *ln1_, mix);
  if (cross_) {
    EF_CHECK(memory.defined(), ValueError, where(), "the cross-attention sublayer needs a memory");
    h = sublayer(h, *ln_cross_, [&](const Tensor& y) { return cross_->forward(y, memory, memory_mask); });
  }
  return sublayer(h, *ln2_, [&](const Tensor& y) { return ffn_->forward(y); });
}

Tensor TransformerBlock::forward(const Tensor& x, const Tensor& key_mask, const Tensor& memory,
                                 const Tensor& memory_mask) const {
  return run(
      x, [&](const Tensor& y) { return attn_->forward(y, {}, key_mask); }, memory, memory_mask);
}

Tensor TransformerBlock::step(const Tensor& x_t, attention::RecurrentState& state, const Tensor& memory,
                              const Tensor& memory_mask) const {
  return run(
      x_t, [&](const Tensor& y) { return attn_->step(y, state); }, memory, memory_mask);
}

}  // namespace eformer::models
