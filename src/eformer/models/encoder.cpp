#include "eformer/models/encoder.h"

#include "eformer/models/language_model.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/loss.h"
#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer::models {
namespace {

void check_ids(const std::string& where, const Tensor& ids, int64_t max_len, const char* what) {
  EF_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::Int64, ShapeError, where, what, " are ",
           ids.defined() ? ids.describe() : std::string("undefined"), "; expected Int64 [batch, seq]");
  EF_CHECK(ids.size(1) <= max_len, ValueError, where, what, ": sequence length ", ids.size(1),
           " exceeds max_len = ", max_len);
}

void check_mask(const std::string& where, const Tensor& mask, const Tensor& ids) {
  if (!mask.defined()) return;
  EF_CHECK(mask.dtype() == DType::Bool && mask.shape() == ids.shape(), ShapeError, where, "key_mask is ",
           mask.describe(), "; expected Bool ", shape_str(ids.shape()));
}

void check_arch(const ModelConfig& c, const char* model, const char* arch) {
  validate_model_config(c);
  EF_CHECK(c.arch == arch, ValueError, model, ": arch = '", c.arch, "'; expected '", arch, "'");
}

}  // namespace

Encoder::Encoder(const ModelConfig& config, int64_t n_layers) : Module("Encoder"), config_(config) {
  embed_ = register_module("embed", std::make_shared<TokenEmbedding>(config_));
  blocks_ = register_module("blocks", build_blocks(config_, n_layers, Stack::Encoder));
  if (config_.pre_ln) ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(config_.d_model));
}

std::string Encoder::describe() const {
  return detail::concat("Encoder(d_model=", config_.d_model, ", n_layers=", blocks_->size(), ")");
}

Tensor Encoder::forward(const Tensor& ids, const Tensor& key_mask) const {
  check_ids(where(), ids, config_.max_len, "ids");
  check_mask(where(), key_mask, ids);
  Tensor h = run_blocks(*blocks_, embed_->forward(ids), key_mask);
  return ln_f_ ? ln_f_->forward(h) : h;
}

SequenceClassifier::SequenceClassifier(const ModelConfig& config)
    : Module("SequenceClassifier"), config_(config) {
  check_arch(config_, "SequenceClassifier", "encoder");
  encoder_ = register_module("encoder", std::make_shared<Encoder>(config_, config_.n_layers));
  if (config_.pooling == "pma")
    pma_ = register_module("pool", std::make_shared<PmaPooling>(config_.d_model, config_.n_heads));
  classifier_ =
      register_module("classifier", std::make_shared<nn::Linear>(config_.d_model, config_.num_classes));
}

std::string SequenceClassifier::describe() const {
  return detail::concat("SequenceClassifier(d_model=", config_.d_model, ", n_layers=", config_.n_layers,
                        ", num_classes=", config_.num_classes, ", pooling=", config_.pooling, ")");
}

Tensor SequenceClassifier::forward(const Tensor& ids, const Tensor& key_mask) const {
  Tensor h = encoder_->forward(ids, key_mask);  // [B, N, D]
  Tensor pooled;
  if (pma_) {
    pooled = pma_->forward(h, key_mask);
  } else if (!key_mask.defined()) {
    pooled = mean(h, {1});
  } else {
    // weights [B, N, 1] = mask / (number of real tokens in the row), 0 for an all-padding row.
    const int64_t B = ids.size(0), N = ids.size(1);
    Tensor m = key_mask.contiguous_data();
    const bool* mp = m.data<bool>();
    Tensor w = Tensor::zeros({B, N, 1});
    float* wp = w.data<float>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t count = 0;
      for (int64_t n = 0; n < N; ++n) count += mp[b * N + n];
      for (int64_t n = 0; n < N; ++n) wp[b * N + n] = mp[b * N + n] ? 1.0f / float(count) : 0.0f;
    }
    pooled = sum(mul(h, w), {1});
  }
  return classifier_->forward(pooled);
}

Tensor SequenceClassifier::loss(const Tensor& ids, const Tensor& labels, const Tensor& key_mask) const {
  EF_CHECK(labels.defined() && labels.dtype() == DType::Int64 && labels.dim() == 1 && ids.defined() &&
               labels.size(0) == ids.size(0),
           ShapeError, where(), "loss: labels are ",
           labels.defined() ? labels.describe() : std::string("undefined"), "; expected Int64 [batch]");
  return cross_entropy(forward(ids, key_mask), labels);
}

EncoderDecoder::EncoderDecoder(const ModelConfig& config) : Module("EncoderDecoder"), config_(config) {
  check_arch(config_, "EncoderDecoder", "encoder-decoder");
  encoder_ = register_module("encoder", std::make_shared<Encoder>(config_, config_.n_encoder_layers));
  decoder_ = register_module("decoder", build_blocks(config_, config_.n_layers, Stack::CrossDecoder));
  if (config_.pre_ln) ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(config_.d_model));
  if (!config_.tie_weights)
    head_ = register_module("head", std::make_shared<nn::Linear>(config_.d_model, config_.vocab_size, false));
}

std::string EncoderDecoder::describe() const {
  return detail::concat("EncoderDecoder(d_model=", config_.d_model,
                        ", n_encoder_layers=", config_.n_encoder_layers, ", n_layers=", config_.n_layers,
                        ")");
}

Tensor EncoderDecoder::encode(const Tensor& src, const Tensor& src_mask) const {
  return encoder_->forward(src, src_mask);
}

Tensor EncoderDecoder::decode(const Tensor& tgt, const Tensor& memory, const Tensor& src_mask) const {
  check_ids(where(), tgt, config_.max_len, "tgt");
  Tensor h = run_blocks(*decoder_, encoder_->embedding()->forward(tgt), {}, memory, src_mask);
  if (ln_f_) h = ln_f_->forward(h);
  return lm_logits(h, *encoder_->embedding(), head_.get());
}

Tensor EncoderDecoder::forward(const Tensor& src, const Tensor& tgt, const Tensor& src_mask) const {
  return decode(tgt, encode(src, src_mask), src_mask);
}

Tensor EncoderDecoder::loss(const Tensor& src, const Tensor& tgt_in, const Tensor& tgt_out,
                            const Tensor& src_mask) const {
  EF_CHECK(tgt_out.defined() && tgt_out.dtype() == DType::Int64 && tgt_out.shape() == tgt_in.shape(),
           ShapeError, where(), "loss: tgt_out is ",
           tgt_out.defined() ? tgt_out.describe() : std::string("undefined"),
           "; expected Int64 of tgt_in's shape ", shape_str(tgt_in.shape()));
  Tensor logits = forward(src, tgt_in, src_mask);
  const int64_t rows = tgt_in.numel();
  return cross_entropy(reshape(logits, {rows, config_.vocab_size}), reshape(tgt_out, {rows}));
}

}  // namespace eformer::models
