#include "eformer/models/language_model.h"

#include "eformer/ops/loss.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

Tensor lm_logits(const Tensor& h, const TokenEmbedding& embed, const nn::Linear* head) {
  if (head) return head->forward(h);
  return matmul(h, embed.tokens()->weight(), false, true);  // [B, N, D] x [V, D]^T
}

LanguageModel::LanguageModel(const ModelConfig& config) : Module("LanguageModel"), config_(config) {
  validate_model_config(config_);
  EF_CHECK(config_.arch == "decoder", ValueError, "LanguageModel: arch = '", config_.arch,
           "'; expected 'decoder' (use SequenceClassifier or EncoderDecoder)");
  embed_ = register_module("embed", std::make_shared<TokenEmbedding>(config_));
  blocks_ = register_module("blocks", build_blocks(config_, config_.n_layers, Stack::Decoder));
  if (config_.pre_ln) ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(config_.d_model));
  if (!config_.tie_weights)
    head_ = register_module("head", std::make_shared<nn::Linear>(config_.d_model, config_.vocab_size, false));
}

std::string LanguageModel::describe() const {
  return detail::concat("LanguageModel(vocab=", config_.vocab_size, ", d_model=", config_.d_model,
                        ", n_heads=", config_.n_heads, ", n_layers=", config_.n_layers,
                        ", max_len=", config_.max_len, ", positions=", config_.positions, ", ",
                        config_.pre_ln ? "pre-LN" : "post-LN", config_.tie_weights ? ", tied" : ", untied",
                        ")");
}

Tensor LanguageModel::final_norm(const Tensor& h) const { return ln_f_ ? ln_f_->forward(h) : h; }

Tensor LanguageModel::head(const Tensor& h) const { return lm_logits(final_norm(h), *embed_, head_.get()); }

const Tensor& LanguageModel::head_weight() const { return head_ ? head_->weight() : embed_->tokens()->weight(); }

Tensor LanguageModel::forward(const Tensor& ids) { return head(hidden(ids)); }

Tensor LanguageModel::hidden(const Tensor& ids) {
  EF_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::Int64, ShapeError, where(), "ids are ",
           ids.defined() ? ids.describe() : std::string("undefined"), "; expected Int64 [batch, seq]");
  EF_CHECK(ids.size(1) <= config_.max_len, ValueError, where(), "sequence length ", ids.size(1),
           " exceeds max_len = ", config_.max_len);
  return run_blocks(*blocks_, embed_->forward(ids));
}

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, Reduction reduction) {
  EF_CHECK(targets.defined() && targets.dtype() == DType::Int64 && targets.shape() == ids.shape(), ShapeError,
           where(), "loss: targets are ", targets.defined() ? targets.describe() : std::string("undefined"),
           "; expected Int64 of the ids' shape ", shape_str(ids.shape()));
  Tensor h = final_norm(hidden(ids));
  const int64_t rows = ids.numel();
  return linear_cross_entropy(reshape(h, {rows, config_.d_model}), head_weight(), reshape(targets, {rows}), -100,
                              reduction);
}

DecodeState LanguageModel::start_decoding(int64_t batch) {
  DecodeState state;
  for (int64_t i = 0; i < blocks_->size(); ++i) state.layers.push_back(block(i).self_attn()->start(batch));
  return state;
}

std::string LanguageModel::streaming_summary() const {
  std::string out;
  for (int64_t i = 0; i < blocks_->size();) {
    const auto& attn = block(i).self_attn();
    const std::string what = attn->name() + ": " + attn->streaming_path();
    int64_t j = i + 1;
    while (j < blocks_->size() && block(j).self_attn()->name() + ": " + block(j).self_attn()->streaming_path() == what) ++j;
    out += (out.empty() ? "" : "; ") +
           (j - i == 1 ? detail::concat("layer ", i) : detail::concat("layers ", i, "-", j - 1)) + " " + what;
    i = j;
  }
  return out;
}

Tensor LanguageModel::step(DecodeState& state, const Tensor& ids) {
  Tensor h = step_blocks(*blocks_, embed_->forward(ids, state.position), state.layers);
  state.position += ids.size(1);
  return head(h);
}

}  // namespace eformer::models
