#include "eformer/attention/mechanisms/performer.h"

#include <cmath>
#include <limits>
#include <optional>

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

// The kernel the features are computed in, for the maps without projection or log-scale (elu + 1,
// relu, identity): kernelized_attention then takes q and k raw and never stores phi.
std::optional<PointwiseMap> pointwise_map(const FeatureMap& fm) {
  if (fm.projection) return std::nullopt;
  switch (fm.kernel) {
    case Kernel::Elu:
      return PointwiseMap::EluPlusOne;
    case Kernel::Relu:
      return PointwiseMap::Relu;
    case Kernel::Identity:
      return PointwiseMap::Identity;
    default:
      return std::nullopt;
  }
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

Tensor kernelized_kind(const std::string& name, const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& opts, const MechanismArgs& args) {
  const std::string op = name + "_attention";
  const AttentionDims s = validate_attention(op.c_str(), q, k, v, opts);
  FeatureMap fm = default_feature_map(name);
  EF_CHECK(args.options.is_object(), ValueError, op, ": options must be a JSON object");
  for (const auto& [key, value] : args.options.items())
    EF_CHECK(parse_feature_option(op, key, value, fm), ValueError, op, ": unknown option '", key,
             "'; valid options: ", kFeatureOptionNames);
  options::check_tensors(op, args, {"omega"});
  validate_feature_map(op, fm);
  EF_CHECK(uses_scale(fm) || opts.scale == 0.0f, ValueError, op,
           ": scale applies to the softmax and gaussian kernels only (this kernel takes q and k as they are)");
  EF_CHECK(opts.dropout == 0.0f, ValueError, op, ": dropout = ", opts.dropout,
           "; kernelized attention has no probabilities to drop (expected 0)");
  EF_CHECK(!opts.causal || s.N == s.M, ShapeError, op, ": causal needs as many queries as keys; got N = ", s.N,
           " and M = ", s.M);
  const auto omega_arg = args.tensors.find("omega");
  const Tensor omega = resolve_omega(op.c_str(), fm, omega_arg == args.tensors.end() ? Tensor() : omega_arg->second, s.d);
  const float root = std::sqrt(s.scale);
  const Tensor x = uses_scale(fm) ? mul_scalar(q, root) : q;
  const Tensor y = uses_scale(fm) ? mul_scalar(k, root) : k;
  if (const auto map = pointwise_map(fm))
    return kernelized_attention(x, y, v, Tensor(), opts.causal, opts.key_mask, *map);
  const KernelFeatures fq = kernel_features(x, omega, fm, false);
  const KernelFeatures fk = kernel_features(y, omega, fm, true);
  return kernelized_attention(fq.phi, fk.phi, v, fk.log_scale, opts.causal, opts.key_mask);
}

std::vector<OptionSpec> performer_option_specs(const std::string& name) {
  const bool lin = name == "linear";
  std::vector<OptionSpec> specs = {
      {"kernel", "string", lin ? "elu" : "softmax", "softmax | gaussian | relu | elu | exp | identity"},
      {"features", "string", "positive", "positive | trig (softmax, gaussian; FAVOR+ eq. 7 vs eq. 6)"},
      {"projection", "bool", lin ? "false" : "true", "features of omega x (relu, elu, exp, identity may turn it off)"},
      {"m", "int", "round(d ln d)", "random features (rows of omega)"},
      {"ortho", "bool", "true", "block-orthogonal omega (Performer sec. 2.4)"},
      {"norms", "string", "chi", "chi | fixed (omega's row norms)"},
      {"redraw", "int", "1000", "training steps between draws of omega (0: never)"},
  };
  for (auto& spec : multi_head_option_specs()) specs.push_back(spec);
  return specs;
}

}  // namespace

Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                           const MechanismArgs& args) {
  return kernelized_kind("performer", q, k, v, opts, args);
}

Tensor linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                        const MechanismArgs& args) {
  return kernelized_kind("linear", q, k, v, opts, args);
}

MechanismEntry performer_entry(const std::string& name) {
  MechanismEntry e;
  e.name = name;
  e.description = name == "linear"
                      ? "linear attention with elu(x) + 1 features (Katharopoulos et al. 2020, eq. 6-7)"
                      : "FAVOR+: softmax kernel by positive orthogonal random features (Choromanski et al. 2020)";
  e.capabilities = {.causal = true, .bidirectional = true, .cross = true, .padding_mask = true, .recurrent = true};
  e.reference = "kernelized";
  e.options = performer_option_specs(name);
  e.check_options = [name](const nlohmann::json& o) { parse_performer_options(name, o); };
  e.make = [name](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<PerformerAttention>(name, c);
  };
  e.functional = [name](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                        const MechanismArgs& args) { return kernelized_kind(name, q, k, v, opts, args); };
  return e;
}

PerformerOptions parse_performer_options(const std::string& name, const nlohmann::json& options,
                                         const std::string& positions) {
  const std::string who = "attention '" + name + "'";
  EF_CHECK(options.is_object(), ValueError, who, ": options must be a JSON object, got ", options.dump());
  PerformerOptions o;
  o.features = default_feature_map(name);
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_feature_option(who, key, value, o.features)) continue;
    if (parse_multi_head_option(who, key, value, o.multi_head)) continue;
    if (key == "redraw")
      o.redraw = options::get_int(who, key, value, 0, std::numeric_limits<int64_t>::max());
    else
      options::unknown(who, key, performer_option_specs(name));
  }
  validate_feature_map(who, o.features);
  return o;
}

PerformerAttention::PerformerAttention(std::string name, const MechanismConfig& config)
    : PerformerAttention(name, config, parse_performer_options(name, config.options, config.positions)) {}

PerformerAttention::PerformerAttention(std::string name, const MechanismConfig& config, PerformerOptions options)
    : ProjectedAttention("PerformerAttention", name, config, options.multi_head), options_(std::move(options)) {
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
  return detail::concat("PerformerAttention(name=", name(), ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", cross=", config_.cross ? "true" : "false",
                        ", ", attention::describe(options_.features), ", redraw=", options_.redraw,
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

KernelFeatures PerformerAttention::features(const Tensor& x, bool keys) const {
  const FeatureMap& fm = options_.features;
  const Tensor scaled = uses_scale(fm) ? mul_scalar(x, 1.0f / std::sqrt(std::sqrt(float(d_)))) : x;
  return kernel_features(scaled, omega(), fm, keys);
}

Tensor PerformerAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  const bool causal = config_.causal && !config_.cross;
  if (const auto map = pointwise_map(options_.features))
    return output(kernelized_attention(h.q, h.k, h.v, Tensor(), causal, key_mask, *map));
  const KernelFeatures fq = features(h.q, false), fk = features(h.k, true);
  return output(kernelized_attention(fq.phi, fk.phi, h.v, fk.log_scale, causal, key_mask));
}

namespace {
struct PerformerState : RecurrentState {
  KernelizedState kernel;
  int64_t length() const override { return kernel.length; }
};
}  // namespace

std::unique_ptr<RecurrentState> PerformerAttention::start_native(int64_t) const {
  return std::make_unique<PerformerState>();
}

Tensor PerformerAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& st = static_cast<PerformerState&>(state);
  const Heads h = project_step(x_t, st.length());
  const KernelFeatures fq = features(h.q, false), fk = features(h.k, true);
  return output(kernelized_attention_step(fq.phi, fk.phi, h.v, fk.log_scale, st.kernel));
}

}  // namespace eformer::attention
