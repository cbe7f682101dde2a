#include "eformer/attention/projected.h"

#include "eformer/nn/positional.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {

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

ProjectedAttention::ProjectedAttention(std::string type_name, const std::string& name, const MechanismConfig& config,
                                       const MultiHeadOptions& heads)
    : Mechanism(std::move(type_name)), config_(config), heads_(heads) {
  EF_CHECK(config.d_model > 0 && config.n_heads > 0, ValueError, "attention '", name,
           "': d_model = ", config.d_model, " and n_heads = ", config.n_heads, "; expected both > 0");
  EF_CHECK(config.d_model % config.n_heads == 0, ValueError, "attention '", name,
           "': d_model = ", config.d_model, " is not divisible by n_heads = ", config.n_heads);
  H_ = config.n_heads;
  d_ = config.d_model / config.n_heads;
  EF_CHECK(!heads_.rotary || d_ % 2 == 0, ValueError, "attention '", name,
           "': rotary needs an even head dim; d_model / n_heads = ", d_);
  const int64_t D = config.d_model;
  q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(D, D));
  k_proj_ = register_module("k_proj", std::make_shared<nn::Linear>(D, D));
  v_proj_ = register_module("v_proj", std::make_shared<nn::Linear>(D, D));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(D, D));
}

void ProjectedAttention::check_input(const Tensor& x, const char* what) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == config_.d_model, ShapeError, where(), what, " is ",
           x.defined() ? x.describe() : std::string("undefined"), "; expected [batch, seq, ", config_.d_model,
           "]");
}

Tensor ProjectedAttention::split_heads(const Tensor& x) const {
  return transpose(reshape(x, {x.size(0), x.size(1), H_, d_}), 1, 2);
}

Tensor ProjectedAttention::output(const Tensor& heads) {
  return out_proj_->forward(reshape(transpose(heads, 1, 2), {heads.size(0), heads.size(2), config_.d_model}));
}

ProjectedAttention::Heads ProjectedAttention::project(const Tensor& x, const Tensor& memory) {
  check_input(x, "x");
  EF_CHECK(config_.cross == memory.defined(), ValueError, where(),
           config_.cross ? "cross-attention needs a memory" : "self-attention takes no memory");
  const Tensor& source = config_.cross ? memory : x;
  if (config_.cross) {
    check_input(memory, "memory");
    EF_CHECK(memory.size(0) == x.size(0), ShapeError, where(), "memory batch ", memory.size(0),
             " != x batch ", x.size(0));
  }
  Heads h{split_heads(q_proj_->forward(x)), split_heads(k_proj_->forward(source)),
          split_heads(v_proj_->forward(source))};
  if (heads_.rotary && !config_.cross) {
    h.q = nn::apply_rotary(h.q, 0, heads_.rotary_base);
    h.k = nn::apply_rotary(h.k, 0, heads_.rotary_base);
  }
  return h;
}

ProjectedAttention::Heads ProjectedAttention::project_step(const Tensor& x_t, int64_t state_batch, int64_t offset) {
  check_input(x_t, "x_t");
  EF_CHECK(x_t.size(0) == state_batch, ShapeError, where(), "step: x_t batch ", x_t.size(0),
           " != the state's batch ", state_batch);
  Heads h{split_heads(q_proj_->forward(x_t)), split_heads(k_proj_->forward(x_t)),
          split_heads(v_proj_->forward(x_t))};
  if (heads_.rotary) {
    h.q = nn::apply_rotary(h.q, offset, heads_.rotary_base);
    h.k = nn::apply_rotary(h.k, offset, heads_.rotary_base);
  }
  return h;
}

void ProjectedAttention::check_start(int64_t batch) const {
  EF_CHECK(batch > 0, ValueError, where(), "start: batch = ", batch, "; expected > 0");
  EF_CHECK(!config_.cross, ValueError, where(),
           "start: cross-attention has no recurrent step (attend to the memory with forward)");
}

}  // namespace eformer::attention
