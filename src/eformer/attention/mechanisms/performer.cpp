#include "eformer/attention/mechanisms/performer.h"

#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

FeatureMap default_feature_map(const std::string& name) {
  FeatureMap fm;
  if (name == "linear") {
    fm.kernel = Kernel::Elu;
    fm.projection = false;
  }
  return fm;
}

// Checks an explicit omega, or draws one; undefined when the map has no projection.
Tensor resolve_omega(const char* op, const FeatureMap& fm, const Tensor& omega, int64_t d) {
  if (!fm.projection) {
    EF_CHECK(!omega.defined(), ValueError, op, ": omega given, but this feature map has no projection");
    return Tensor();
  }
  if (!omega.defined()) return draw_omega(num_random_features(fm, d), d, fm.ortho, fm.fixed_norms, rng::default_generator());
  EF_CHECK(omega.dtype() == DType::Float32 && omega.dim() == 2 && omega.size(1) == d && omega.size(0) > 0, ShapeError,
           op, ": omega is ", omega.describe(), "; expected float32 [m, head_dim] = [m, ", d, "]");
  EF_CHECK(fm.m == 0 || fm.m == omega.size(0), ValueError, op, ": option m = ", fm.m, " but omega has ",
           omega.size(0), " rows");
  return omega.detach();
}

Tensor kernelized_kind(const char* op, const std::string& name, const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& opts) {
  const AttentionDims s = validate_attention(op, q, k, v, opts);
  FeatureMap fm = default_feature_map(name);
  EF_CHECK(opts.feature_options.is_object(), ValueError, op, ": feature options must be a JSON object");
  for (const auto& [key, value] : opts.feature_options.items())
    EF_CHECK(parse_feature_option(op, key, value, fm), ValueError, op, ": unknown option '", key,
             "'; valid options: ", kFeatureOptionNames);
  validate_feature_map(op, fm);
  EF_CHECK(uses_scale(fm) || opts.scale == 0.0f, ValueError, op,
           ": scale applies to the softmax and gaussian kernels only (this kernel takes q and k as they are)");
  EF_CHECK(!opts.causal || s.N == s.M, ShapeError, op, ": causal needs as many queries as keys; got N = ", s.N,
           " and M = ", s.M);
  const Tensor omega = resolve_omega(op, fm, opts.omega, s.d);
  const float root = std::sqrt(s.scale);
  const Tensor x = uses_scale(fm) ? mul_scalar(q, root) : q;
  const Tensor y = uses_scale(fm) ? mul_scalar(k, root) : k;
  const KernelFeatures fq = kernel_features(x, omega, fm, false);
  const KernelFeatures fk = kernel_features(y, omega, fm, true);
  return kernelized_attention(fq.phi, fk.phi, v, fk.log_scale, opts.causal, opts.key_mask);
}

}  // namespace

Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  return kernelized_kind("performer_attention", "performer", q, k, v, opts);
}

Tensor linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  return kernelized_kind("linear_attention", "linear", q, k, v, opts);
}

PerformerOptions parse_performer_options(const std::string& name, const nlohmann::json& options) {
  const std::string who = "attention '" + name + "'";
  EF_CHECK(options.is_object(), ValueError, who, ": options must be a JSON object, got ", options.dump());
  PerformerOptions o;
  o.features = default_feature_map(name);
  nlohmann::json rotary = nlohmann::json::object();
  for (const auto& [key, value] : options.items()) {
    if (parse_feature_option(who, key, value, o.features)) continue;
    if (key == "redraw") {
      EF_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0, ValueError, who, ": option redraw = ",
               value.dump(), "; expected an integer >= 0 (training steps between draws; 0 = never)");
      o.redraw = value.get<int64_t>();
    } else if (key == "rotary" || key == "rotary_base") {
      rotary[key] = value;
    } else {
      throw ValueError(detail::concat(who, ": unknown option '", key, "'; valid options: ", kFeatureOptionNames,
                                      ", redraw, rotary, rotary_base"));
    }
  }
  validate_feature_map(who, o.features);
  o.multi_head = parse_multi_head_options(name, rotary);
  return o;
}

PerformerAttention::PerformerAttention(std::string name, const MechanismConfig& config)
    : PerformerAttention(name, config, parse_performer_options(name, config.options)) {}

PerformerAttention::PerformerAttention(std::string name, const MechanismConfig& config, PerformerOptions options)
    : ProjectedAttention("PerformerAttention", name, config, options.multi_head),
      name_(std::move(name)),
      options_(std::move(options)) {
  if (options_.features.projection) {
    // The features' seed comes from the default generator, so a model is reproducible from
    // rng::manual_seed; every later draw is a pure function of (seed, draw index).
    rng::Generator& g = rng::default_generator();
    const auto w = rng::philox(g.state().seed, g.state().stream, g.reserve(1));
    const int64_t seed = int64_t((uint64_t(w[0]) << 32 | w[1]) >> 1);
    omega_ = &register_buffer("omega", Tensor::zeros({num_random_features(options_.features, d_), d_}));
    omega_draw_ = &register_buffer("omega_draw", Tensor::from_vector(std::vector<int64_t>{seed, -1}, {2}));
    redraw(0);
  }
}

int64_t PerformerAttention::draw_index() const { return omega_draw_ ? omega_draw_->data<int64_t>()[1] : 0; }

void PerformerAttention::redraw(int64_t index) {
  int64_t* draw = omega_draw_->data<int64_t>();
  rng::Generator gen{uint64_t(draw[0]), uint64_t(index)};
  const FeatureMap& fm = options_.features;
  Tensor fresh = draw_omega(omega_->size(0), d_, fm.ortho, fm.fixed_norms, gen);
  std::copy(fresh.data<float>(), fresh.data<float>() + fresh.numel(), omega_->data<float>());
  draw[1] = index;
}

void PerformerAttention::on_step(int64_t step) {
  if (!is_training() || !omega_ || options_.redraw <= 0) return;
  const int64_t index = step / options_.redraw;
  if (index != draw_index()) redraw(index);
}

std::string PerformerAttention::describe() const {
  return detail::concat("PerformerAttention(name=", name_, ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", cross=", config_.cross ? "true" : "false",
                        ", ", attention::describe(options_.features), ", redraw=", options_.redraw,
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Capabilities PerformerAttention::capabilities() const {
  return {.causal = true, .bidirectional = true, .cross = true, .padding_mask = true, .recurrent = true};
}

KernelFeatures PerformerAttention::features(const Tensor& x, bool keys) const {
  const FeatureMap& fm = options_.features;
  const Tensor scaled = uses_scale(fm) ? mul_scalar(x, 1.0f / std::sqrt(std::sqrt(float(d_)))) : x;
  return kernel_features(scaled, omega(), fm, keys);
}

Tensor PerformerAttention::forward(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  if (key_mask.defined())
    EF_CHECK(key_mask.dtype() == DType::Bool && key_mask.shape() == Shape({x.size(0), h.k.size(2)}), ShapeError,
             where(), "key_mask is ", key_mask.describe(), "; expected bool [", x.size(0), ", ", h.k.size(2), "]");
  const KernelFeatures fq = features(h.q, false), fk = features(h.k, true);
  const bool causal = config_.causal && !config_.cross;
  return output(kernelized_attention(fq.phi, fk.phi, h.v, fk.log_scale, causal, key_mask));
}

namespace {
struct PerformerState : RecurrentState {
  int64_t batch = 0;
  KernelizedState kernel;
  int64_t length() const override { return kernel.length; }
};
}  // namespace

std::unique_ptr<RecurrentState> PerformerAttention::start(int64_t batch) const {
  check_start(batch);
  auto state = std::make_unique<PerformerState>();
  state->batch = batch;
  return state;
}

Tensor PerformerAttention::step(const Tensor& x_t, RecurrentState& state) {
  auto* st = dynamic_cast<PerformerState*>(&state);
  EF_CHECK(st != nullptr, ValueError, where(), "step: the state was not made by this mechanism's start()");
  const Heads h = project_step(x_t, st->batch, st->length());
  const KernelFeatures fq = features(h.q, false), fk = features(h.k, true);
  return output(kernelized_attention_step(fq.phi, fk.phi, h.v, fk.log_scale, st->kernel));
}

}  // namespace eformer::attention
