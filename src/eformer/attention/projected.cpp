#include "eformer/attention/projected.h"

#include "eformer/attention/kernels/head_projection.h"
#include "eformer/autograd/autograd.h"
#include "eformer/nn/positional.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {

std::vector<OptionSpec> multi_head_option_specs() {
  return {
      {"rotary", "bool", "positions == rotary", "rotary embeddings on q and k (RoFormer, Su et al. 2021)"},
      {"rotary_base", "number", "10000", "the rotary base"}};
}

bool parse_multi_head_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                             MultiHeadOptions& o) {
  if (key == "rotary") {
    o.rotary = options::get_bool(who, key, value);
  } else if (key == "rotary_base") {
    EF_CHECK(value.is_number() && value.get<double>() > 0, ValueError, who,
             ": option rotary_base = ", value.dump(), "; expected a number > 0");
    o.rotary_base = value.get<float>();
  } else {
    return false;
  }
  return true;
}

MultiHeadOptions parse_multi_head_options(const std::string& mechanism, const nlohmann::json& options,
                                          const std::string& positions) {
  const std::string who = "attention '" + mechanism + "'";
  EF_CHECK(options.is_object(), ValueError, who, ": options must be a JSON object, got ", options.dump());
  MultiHeadOptions o;
  o.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items())
    if (!parse_multi_head_option(who, key, value, o)) options::unknown(who, key, multi_head_option_specs());
  return o;
}

ProjectedAttention::ProjectedAttention(std::string type_name, const std::string& name,
                                       const MechanismConfig& config, const MultiHeadOptions& heads,
                                       const ProjectionSpec& spec)
    : Mechanism(std::move(type_name), name, config), heads_(heads), spec_(spec) {
  const int64_t D = config.d_model;
  if (spec_.qk_width == 0) spec_.qk_width = D;
  if (spec_.v_width == 0) spec_.v_width = D;
  H_ = spec_.heads > 0 ? spec_.heads : config.n_heads;
  for (const auto& [what, width] : {std::pair<const char*, int64_t>{"d_model", D},
                                    {"the q/k width", spec_.qk_width},
                                    {"the v width", spec_.v_width}})
    EF_CHECK(width % H_ == 0, ValueError, label(), ": ", what, " = ", width,
             " is not divisible by n_heads = ", H_);
  d_ = spec_.qk_width / H_;
  dv_ = spec_.v_width / H_;
  EF_CHECK(!heads_.rotary || !spec_.query_key || d_ % 2 == 0, ValueError, label(),
           ": rotary needs an even head dim; d_model / n_heads = ", d_);
  if (spec_.query_key) {
    q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(D, spec_.qk_width));
    if (!spec_.shared_qk)
      k_proj_ = register_module("k_proj", std::make_shared<nn::Linear>(D, spec_.qk_width));
  }
  v_proj_ = register_module("v_proj", std::make_shared<nn::Linear>(D, spec_.v_width));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(spec_.v_width, D));
}

Tensor ProjectedAttention::to_heads(const nn::Linear& proj, const Tensor& x) const {
  return project_to_heads(x, proj.weight(), proj.bias(), H_);
}

Tensor ProjectedAttention::output(const Tensor& heads) {
  return project_from_heads(heads, out_proj_->weight(), out_proj_->bias());
}

Tensor ProjectedAttention::output_remade(std::function<Tensor(const std::vector<Tensor>&)> make,
                                         const std::vector<Tensor>& inputs) {
  // The projection is captured by value, so a backward after this module changed still remakes the forward.
  auto project = [proj = out_proj_, make = std::move(make)](const std::vector<Tensor>& in) {
    return project_from_heads(make(in), proj->weight(), proj->bias());
  };
  return autograd::checkpoint(project, inputs);
}

ProjectedAttention::Heads ProjectedAttention::project_at(const Tensor& x, const Tensor& source, bool rotary,
                                                         int64_t offset) {
  Heads h;
  if (spec_.query_key) {
    h.q = to_heads(*q_proj_, x);
    h.k = spec_.shared_qk ? (source.is_same(x) ? h.q : to_heads(*q_proj_, source)) : to_heads(*k_proj_, source);
    if (rotary) {
      h.q = nn::apply_rotary(h.q, offset, heads_.rotary_base);
      h.k = spec_.shared_qk && source.is_same(x) ? h.q : nn::apply_rotary(h.k, offset, heads_.rotary_base);
    }
  }
  h.v = to_heads(*v_proj_, source);
  return h;
}

ProjectedAttention::Heads ProjectedAttention::project(const Tensor& x, const Tensor& memory) {
  return config_.cross ? project_at(x, memory, false, 0) : project_at(x, x, heads_.rotary, 0);
}

ProjectedAttention::Heads ProjectedAttention::project_step(const Tensor& x_t, int64_t offset) {
  return project_at(x_t, x_t, heads_.rotary, offset);
}

}  // namespace eformer::attention
