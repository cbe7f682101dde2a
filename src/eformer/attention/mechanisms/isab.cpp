#include "eformer/attention/mechanisms/isab.h"

#include <cmath>

#include "eformer/attention/kernels/narrow_attention.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'isab'";
constexpr int64_t kMaxInducing = 65536;

std::vector<OptionSpec> isab_option_specs() {
  return {{"inducing", "int", "32", "m, the number of learned inducing points (cost O(N m))"}};
}

}  // namespace

Tensor isab_core(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inducing,
                 const AttentionOptions& opts) {
  const AttentionDims dims = validate_attention(kWho, q, k, v, opts);
  EF_CHECK(!opts.causal, ValueError, kWho, ": has no causal form (a set has no order)");
  EF_CHECK(inducing.defined() && inducing.dtype() == DType::Float32 && inducing.dim() == 3 &&
               inducing.size(0) == dims.H && inducing.size(2) == dims.d && inducing.size(1) >= 1,
           ShapeError, kWho, ": inducing is ", inducing.defined() ? inducing.describe() : "undefined",
           "; expected the inducing queries [", dims.H, ", m, ", dims.d, "]");
  const int64_t m = inducing.size(1);
  AttentionOptions first;
  first.key_mask = opts.key_mask, first.scale = opts.scale;
  const Tensor h =
      narrow_attention(expand(reshape(inducing, {1, dims.H, m, dims.d}), {dims.B, dims.H, m, dims.d}), k, v,
                       first);  // [B, H, m, d]
  AttentionOptions second;
  second.scale = opts.scale, second.dropout = opts.dropout;
  return narrow_attention(q, h, h, second);
}

IsabOptions parse_isab_options(const nlohmann::json& options) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  IsabOptions o;
  for (const auto& [key, value] : options.items()) {
    if (key != "inducing") options::unknown(kWho, key, isab_option_specs());
    o.inducing = options::get_int(kWho, key, value, 1, kMaxInducing);
  }
  return o;
}

MechanismEntry isab_entry() {
  MechanismEntry e;
  e.name = "isab";
  e.description =
      "Set Transformer's induced set attention ISAB_m(X) = MAB(X, MAB(I, X)) through m learned inducing "
      "points, O(N m) (Lee et al. 2019, eq. 9)";
  e.capabilities = {.bidirectional = true, .padding_mask = true, .dropout = true};
  e.reference = "isab";
  e.options = isab_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_isab_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> { return std::make_shared<IsabAttention>(c); };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) {
    EF_CHECK(args.options.is_object(), ValueError, kWho, ": options must be a JSON object");
    for (const auto& [key, value] : args.options.items()) options::unknown(kWho, key, {});
    options::check_tensors(kWho, args, {"inducing"});
    const auto it = args.tensors.find("inducing");
    EF_CHECK(it != args.tensors.end(), ValueError, kWho,
             ": needs the tensor argument inducing (the inducing queries [heads, m, d])");
    return isab_core(q, k, v, it->second, opts);
  };
  return e;
}

IsabAttention::IsabAttention(const MechanismConfig& config)
    : ProjectedAttention("IsabAttention", "isab", config, MultiHeadOptions{}),
      options_(parse_isab_options(config.options)) {
  const int64_t D = config.d_model;
  inducing_ = &register_parameter("inducing", nn::normal_init({options_.inducing, D}, 1.0f / std::sqrt(float(D))));
  block_ = register_module("inducing_block", std::make_shared<SetAttentionBlock>(D, H_, false));
  h_k_proj_ = register_module("h_k_proj", std::make_shared<nn::Linear>(D, D));
  h_v_proj_ = register_module("h_v_proj", std::make_shared<nn::Linear>(D, D));
}

std::string IsabAttention::describe() const {
  return detail::concat("IsabAttention(d_model=", config_.d_model, ", heads=", H_, ", inducing=", options_.inducing,
                        ")");
}

Tensor IsabAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);  // q: the outer MAB's queries; k, v: the inducing step's keys and values
  const int64_t m = options_.inducing, D = config_.d_model;
  const Tensor induced = block_->forward_heads(reshape(*inducing_, {1, m, D}), h.k, h.v, key_mask);  // H [B, m, D]
  AttentionOptions opts;
  opts.dropout = active_dropout();
  return output(narrow_attention(h.q, split_heads(h_k_proj_->forward(induced), H_),
                                 split_heads(h_v_proj_->forward(induced), H_), opts));
}

}  // namespace eformer::attention
