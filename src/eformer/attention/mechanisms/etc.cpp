#include "eformer/attention/mechanisms/etc.h"

#include <vector>

#include "eformer/nn/linear.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'etc'";

std::vector<OptionSpec> etc_option_specs() {
  std::vector<OptionSpec> specs = {
      {"globals", "int", "16",
       "n_g: the first n_g positions are global tokens (attend and are attended by all)"},
      {"radius", "int", "64", "r: long tokens attend long tokens with |i - j| <= r"},
      {"max_distance", "int", "16",
       "k: relative position labels clip(j - i, -k, k), a learned bias per head"},
  };
  for (auto& spec : multi_head_option_specs()) specs.push_back(spec);
  return specs;
}

bool parse_shared_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                         EtcOptions& o) {
  if (key == "globals")
    o.globals = options::get_int(who, key, value, 0);
  else if (key == "radius")
    o.radius = options::get_int(who, key, value, 0);
  else if (key == "max_distance")
    o.max_distance = options::get_int(who, key, value, 0, 1 << 16);
  else
    return false;
  return true;
}

// The exact layout of the pattern over N tokens (cached).
std::shared_ptr<const kernels::BlockSparseLayout> etc_layout(int64_t N, int64_t globals, int64_t radius) {
  const int64_t kb = kernels::block_sparse_block();
  const std::string key =
      detail::concat("etc n=", N, " globals=", globals, " radius=", radius, " block=", kb);
  return kernels::cached_layouts(key, [&] {
    auto allowed = [=](int64_t, int64_t i, int64_t j) { return etc_allows(i, j, globals, radius); };
    auto candidates = [=](int64_t, int64_t qb, int64_t block, std::vector<int64_t>& out) {
      const int64_t r0 = qb * block, r1 = std::min(N, r0 + block);
      const int64_t nk = (N + block - 1) / block;
      if (r0 < globals) {  // global rows see every key
        for (int64_t c = 0; c < nk; ++c) out.push_back(c);
        return;
      }
      for (int64_t c = 0; c * block < std::min(globals, N); ++c) out.push_back(c);
      for (int64_t c = std::max<int64_t>(0, r0 - radius) / block;
           c * block <= std::min(N - 1, r1 - 1 + radius); ++c)
        out.push_back(c);
    };
    return kernels::LayoutParts{std::make_shared<const kernels::BlockSparseLayout>(
        kernels::build_layout(N, N, kb, 1, allowed, candidates))};
  })[0];
}

}  // namespace

EtcOptions parse_etc_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  EtcOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items())
    if (!parse_shared_option(kWho, key, value, o) && !parse_multi_head_option(kWho, key, value, o.multi_head))
      options::unknown(kWho, key, etc_option_specs());
  return o;
}

Tensor etc_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                     const EtcOptions& o, const Tensor& relative_bias) {
  const char* who = "etc_attention";
  const AttentionDims s = validate_attention(who, q, k, v, opts);
  EF_CHECK(!opts.causal, ValueError, who, ": ETC is bidirectional (an encoder); it has no causal form");
  EF_CHECK(s.M == s.N, ShapeError, who, ": k has ", s.M, " rows but q has ", s.N,
           "; etc is self-attention only (its global tokens are positions of the sequence)");
  auto layout = etc_layout(s.N, o.globals, o.radius);
  const kernels::RelativeLabels labels{o.max_distance, o.globals};
  Tensor table = relative_bias.defined() ? relative_bias : Tensor::zeros({s.H, labels.count()});
  return block_sparse_attention(q, k, v, opts, layout, RelativeScoreBias{table, o.max_distance, o.globals});
}

MechanismEntry etc_entry() {
  MechanismEntry e;
  e.name = "etc";
  e.description =
      "ETC global-local attention: n_g global tokens attend and are attended by all, long tokens "
      "within radius r, learned relative position bias (Ainslie et al. 2020)";
  e.capabilities = {.bidirectional = true, .padding_mask = true, .dropout = true};
  e.reference = "etc";
  e.options = etc_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_etc_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<EtcAttention>(c);
  };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) {
    const std::string who = "attention 'etc'";
    EF_CHECK(args.options.is_object(), ValueError, who, ": options must be a JSON object");
    EtcOptions o;
    for (const auto& [key, value] : args.options.items())
      if (!parse_shared_option(who, key, value, o))
        throw ValueError(detail::concat(who, ": unknown option '", key,
                                        "'; valid options: globals, radius, max_distance"));
    options::check_tensors(who, args, {"relative_bias"});
    auto it = args.tensors.find("relative_bias");
    return etc_attention(q, k, v, opts, o, it == args.tensors.end() ? Tensor() : it->second);
  };
  e.pattern = [](int64_t N, int64_t M, int64_t heads, bool, const MechanismArgs& args, uint64_t) {
    const std::string who = "attention_pattern 'etc'";
    EtcOptions o;
    for (const auto& [key, value] : args.options.items())
      if (!parse_shared_option(who, key, value, o)) options::unknown(who, key, etc_option_specs());
    Tensor t = Tensor::zeros({heads, N, M}, DType::Bool);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < M; ++j)
          t.data<bool>()[(h * N + i) * M + j] = etc_allows(i, j, o.globals, o.radius);
    return t;
  };
  return e;
}

EtcAttention::EtcAttention(const MechanismConfig& config)
    : EtcAttention(config, parse_etc_options(config.options, config.positions)) {}

EtcAttention::EtcAttention(const MechanismConfig& config, EtcOptions options)
    : ProjectedAttention("EtcAttention", "etc", config, options.multi_head), options_(std::move(options)) {
  const int64_t labels = kernels::RelativeLabels{options_.max_distance, options_.globals}.count();
  relative_bias_ = register_parameter("relative_bias", nn::normal_init({H_, labels}, 0.02f));
}

std::string EtcAttention::describe() const {
  return detail::concat("EtcAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", globals=", options_.globals, ", radius=", options_.radius,
                        ", max_distance=", options_.max_distance,
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Tensor EtcAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  return output(etc_attention(h.q, h.k, h.v, opts, options_, relative_bias_));
}

}  // namespace eformer::attention
