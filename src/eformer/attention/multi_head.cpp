#include "eformer/attention/multi_head.h"

#include "eformer/attention/functional.h"
#include "eformer/nn/positional.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

// The KV cache: K, V [B, H, T, d] (undefined before the first step).
struct KVCache : RecurrentState {
  int64_t batch = 0;
  Tensor k, v;
  int64_t length() const override { return k.defined() ? k.size(2) : 0; }
};

}  // namespace

MultiHeadOptions parse_multi_head_options(const std::string& mechanism, const nlohmann::json& options) {
  MultiHeadOptions o;
  const char* valid = "rotary, rotary_base";
  EF_CHECK(options.is_object(), ValueError, "attention '", mechanism,
           "': options must be a JSON object, got ", options.dump());
  for (const auto& [key, value] : options.items()) {
    if (key == "rotary") {
      EF_CHECK(value.is_boolean(), ValueError, "attention '", mechanism, "': option rotary = ", value.dump(),
               "; expected true or false");
      o.rotary = value.get<bool>();
    } else if (key == "rotary_base") {
      EF_CHECK(value.is_number() && value.get<double>() > 0, ValueError, "attention '", mechanism,
               "': option rotary_base = ", value.dump(), "; expected a number > 0");
      o.rotary_base = value.get<float>();
    } else {
      throw ValueError(
          detail::concat("attention '", mechanism, "': unknown option '", key, "'; valid options: ", valid));
    }
  }
  return o;
}

MultiHeadAttention::MultiHeadAttention(std::string kind, const MechanismConfig& config)
    : Mechanism("MultiHeadAttention"), kind_(std::move(kind)), config_(config) {
  options_ = parse_multi_head_options(kind_, config.options);
  EF_CHECK(config.d_model > 0 && config.n_heads > 0, ValueError, "attention '", kind_,
           "': d_model = ", config.d_model, " and n_heads = ", config.n_heads, "; expected both > 0");
  EF_CHECK(config.d_model % config.n_heads == 0, ValueError, "attention '", kind_,
           "': d_model = ", config.d_model, " is not divisible by n_heads = ", config.n_heads);
  H_ = config.n_heads;
  d_ = config.d_model / config.n_heads;
  EF_CHECK(!options_.rotary || d_ % 2 == 0, ValueError, "attention '", kind_,
           "': rotary needs an even head dim; ", "d_model / n_heads = ", d_);
  const int64_t D = config.d_model;
  q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(D, D));
  k_proj_ = register_module("k_proj", std::make_shared<nn::Linear>(D, D));
  v_proj_ = register_module("v_proj", std::make_shared<nn::Linear>(D, D));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(D, D));
}

std::string MultiHeadAttention::describe() const {
  return detail::concat("MultiHeadAttention(kind=", kind_, ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false",
                        ", cross=", config_.cross ? "true" : "false",
                        ", rotary=", options_.rotary ? "true" : "false", ")");
}

Capabilities MultiHeadAttention::capabilities() const {
  return {.causal = true, .bidirectional = true, .cross = true, .padding_mask = true, .recurrent = true};
}

void MultiHeadAttention::check_input(const Tensor& x, const char* what) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == config_.d_model, ShapeError, where(), what, " is ",
           x.defined() ? x.describe() : std::string("undefined"), "; expected [batch, seq, ", config_.d_model,
           "]");
}

Tensor MultiHeadAttention::split_heads(const Tensor& x) const {
  return transpose(reshape(x, {x.size(0), x.size(1), H_, d_}), 1, 2);
}

Tensor MultiHeadAttention::merge_heads(const Tensor& x) const {
  return reshape(transpose(x, 1, 2), {x.size(0), x.size(2), config_.d_model});
}

Tensor MultiHeadAttention::forward(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  check_input(x, "x");
  EF_CHECK(config_.cross == memory.defined(), ValueError, where(),
           config_.cross ? "cross-attention needs a memory" : "self-attention takes no memory");
  const Tensor& source = config_.cross ? memory : x;
  if (config_.cross) {
    check_input(memory, "memory");
    EF_CHECK(memory.size(0) == x.size(0), ShapeError, where(), "memory batch ", memory.size(0),
             " != x batch ", x.size(0));
  }
  Tensor q = split_heads(q_proj_->forward(x));
  Tensor k = split_heads(k_proj_->forward(source));
  Tensor v = split_heads(v_proj_->forward(source));
  if (options_.rotary && !config_.cross) {
    q = nn::apply_rotary(q, 0, options_.rotary_base);
    k = nn::apply_rotary(k, 0, options_.rotary_base);
  }
  AttentionOptions opts;
  opts.causal = config_.causal && !config_.cross;
  opts.key_mask = key_mask;
  return out_proj_->forward(merge_heads(attention(q, k, v, kind_, opts)));
}

std::unique_ptr<RecurrentState> MultiHeadAttention::start(int64_t batch) const {
  EF_CHECK(batch > 0, ValueError, where(), "start: batch = ", batch, "; expected > 0");
  EF_CHECK(!config_.cross, ValueError, where(),
           "start: cross-attention has no recurrent step (attend to the memory with forward)");
  auto state = std::make_unique<KVCache>();
  state->batch = batch;
  return state;
}

Tensor MultiHeadAttention::step(const Tensor& x_t, RecurrentState& state) {
  auto* cache = dynamic_cast<KVCache*>(&state);
  EF_CHECK(cache != nullptr, ValueError, where(), "step: the state was not made by this mechanism's start()");
  check_input(x_t, "x_t");
  EF_CHECK(x_t.size(0) == cache->batch, ShapeError, where(), "step: x_t batch ", x_t.size(0),
           " != the state's batch ", cache->batch);
  const int64_t offset = cache->length();
  Tensor q = split_heads(q_proj_->forward(x_t));
  Tensor k = split_heads(k_proj_->forward(x_t));
  Tensor v = split_heads(v_proj_->forward(x_t));
  if (options_.rotary) {
    q = nn::apply_rotary(q, offset, options_.rotary_base);
    k = nn::apply_rotary(k, offset, options_.rotary_base);
  }
  cache->k = cache->k.defined() ? cat({cache->k, k}, 2) : contiguous(k);
  cache->v = cache->v.defined() ? cat({cache->v, v}, 2) : contiguous(v);
  AttentionOptions opts;
  opts.causal = true;  // bottom-right aligned: new query t sees keys up to offset + t
  return out_proj_->forward(merge_heads(attention(q, cache->k, cache->v, kind_, opts)));
}

}  // namespace eformer::attention
