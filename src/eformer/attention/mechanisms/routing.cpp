#include "eformer/attention/mechanisms/routing.h"

#include <cmath>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/lsh.h"
#include "eformer/attention/kernels/routing.h"
#include "eformer/attention/kernels/routing_top.h"
#include "eformer/attention/mechanisms/bucket_cache.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'routing'";
constexpr int64_t kMaxClusters = int64_t(1) << 16;

std::vector<OptionSpec> routing_option_specs() {
  std::vector<OptionSpec> specs = {
      {"clusters", "int", "round(max_len / window)", "k-means centroids c (1: exact shared-QK attention when "
                                                     "window >= N)"},
      {"window", "int", "64", "sorted chunk w (causal: the last <= 2w - 1 earlier keys of the token's cluster; "
                              "bidirectional: its sorted chunk and the one before)"},
      {"balance", "string", "nearest", "nearest: each token in the cluster of its nearest centroid, attended in "
                                       "sorted chunks of window; top: each centroid takes its window most similar "
                                       "tokens, a token in several clusters averaged, in none 0 (Roy et al. sec. "
                                       "4.1; bidirectional only: causal would leak)"},
      {"decay", "float", "0.999", "moving-average lambda of the centroids (Roy et al. sec. 4.1; 1: frozen)"},
      {"local_heads", "int", "0", "heads (the last ones) that attend a local window instead of routing"},
      {"seed", "int", "from the default generator", "the seed of the initial centroids"},
  };
  for (auto& spec : multi_head_option_specs()) specs.push_back(spec);
  return specs;
}

// Parses one of the options the module and the functional form share; false for other keys.
bool parse_shared_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                         RoutingOptions& o) {
  if (key == "window")
    o.window = options::get_int(who, key, value, 1, 1 << 16);
  else if (key == "local_heads")
    o.local_heads = options::get_int(who, key, value, 0, 1 << 16);
  else if (key == "balance")
    o.balance = options::get_string(who, key, value, {"nearest", "top"}) == "top" ? RoutingBalance::top
                                                                                   : RoutingBalance::nearest;
  else
    return false;
  return true;
}

const char* balance_name(RoutingBalance b) { return b == RoutingBalance::top ? "top" : "nearest"; }

// The error of a causal request with balance "top", naming the leak.
void check_balance_causal(const std::string& who, RoutingBalance balance, bool causal) {
  EF_CHECK(!(causal && balance == RoutingBalance::top), ValueError, who,
           ": option balance = 'top' has no causal form (a centroid's top-w tokens depend on later tokens: "
           "a leak, and a streaming step cannot know them); use balance 'nearest' for causal attention");
}

}  // namespace

Tensor routing_attention_balanced(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids,
                                  const RoutingOptions& o, const AttentionOptions& opts, ClusterSums* stats) {
  if (o.balance == RoutingBalance::nearest)
    return routing_attention(q, k, v, centroids, o.window, o.local_heads, opts, stats);
  if (o.local_heads == 0) return routing_top_attention(q, k, v, centroids, o.window, opts, stats);
  const char* op = "routing_attention";  // checked before the heads are split
  const AttentionDims dims = validate_attention(op, q, k, v, opts);
  check_routing_centroids(op, centroids, dims);
  EF_CHECK(o.local_heads <= dims.H, ValueError, op, ": local_heads = ", o.local_heads, "; expected 0 ..", dims.H,
           " (the heads)");
  if (o.local_heads == dims.H) return routing_attention(q, k, v, centroids, o.window, o.local_heads, opts, stats);
  // The routing heads by their balanced clusters, the local heads by the sorted-chunk kernel.
  const int64_t H = q.size(1), Hr = H - o.local_heads;
  auto heads = [](const Tensor& x, int64_t h0, int64_t n) { return narrow(x, 1, h0, n); };
  const Tensor qr = heads(q, 0, Hr), ql = heads(q, Hr, o.local_heads);
  const Tensor kr = q.is_same(k) ? qr : heads(k, 0, Hr), kl = q.is_same(k) ? ql : heads(k, Hr, o.local_heads);
  ClusterSums routed;
  Tensor a = routing_top_attention(qr, kr, heads(v, 0, Hr), narrow(centroids, 0, 0, Hr), o.window, opts,
                                   stats ? &routed : nullptr);
  Tensor b = routing_attention(ql, kl, heads(v, Hr, o.local_heads), narrow(centroids, 0, Hr, o.local_heads),
                               o.window, o.local_heads, opts);
  if (stats) {  // the local heads learn nothing: zeros after the routing heads' sums
    const int64_t c = centroids.size(1), d = centroids.size(2);
    *stats = {Tensor::zeros({H, c, d}), Tensor::zeros({H, c})};
    std::copy_n(routed.sums.data<float>(), Hr * c * d, stats->sums.data<float>());
    std::copy_n(routed.counts.data<float>(), Hr * c, stats->counts.data<float>());
  }
  return cat({a, b}, 1);
}

Tensor draw_routing_centroids(int64_t heads, int64_t clusters, int64_t d, rng::Generator& gen) {
  Tensor mu = Tensor::empty({heads, clusters, d});
  float* p = mu.data<float>();
  rng::normal_(p, mu.numel(), gen);
  for (int64_t r = 0; r < heads * clusters; ++r) kernels::lsh_normalize_row(p + r * d, p + r * d, d);
  return mu;
}

RoutingOptions parse_routing_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  RoutingOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_shared_option(kWho, key, value, o) || parse_multi_head_option(kWho, key, value, o.multi_head)) continue;
    if (key == "clusters") {
      o.clusters = options::get_int(kWho, key, value, 1, kMaxClusters);
    } else if (key == "decay") {
      o.decay = options::get_number(kWho, key, value);
      EF_CHECK(o.decay >= 0.0 && o.decay <= 1.0, ValueError, kWho, ": option decay = ", o.decay,
               "; expected 0 <= decay <= 1");
    } else if (key == "seed") {
      o.seed = options::get_int(kWho, key, value, 0, std::numeric_limits<int64_t>::max());
    } else {
      options::unknown(kWho, key, routing_option_specs());
    }
  }
  return o;
}

Tensor routing_attention_functional(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                    const MechanismArgs& args) {
  const std::string who = "routing_attention";
  EF_CHECK(args.options.is_object(), ValueError, who, ": options must be a JSON object");
  RoutingOptions o;
  for (const auto& [key, value] : args.options.items())
    if (!parse_shared_option(who, key, value, o))
      throw ValueError(
          detail::concat(who, ": unknown option '", key, "'; valid options: window, local_heads, balance"));
  options::check_tensors(who, args, {"centroids"});
  const auto given = args.tensors.find("centroids");
  EF_CHECK(given != args.tensors.end(), ValueError, who,
           ": needs the tensor 'centroids' [heads, clusters, head_dim] (the module keeps its own)");
  check_balance_causal(who, o.balance, opts.causal);
  return routing_attention_balanced(q, k, v, given->second, o, opts);
}

MechanismEntry routing_entry() {
  MechanismEntry e;
  e.name = "routing";
  e.description = "Routing Transformer: shared-QK keys routed to the nearest of c online k-means centroids, "
                  "attention within a cluster in sorted chunks, optional local heads (Roy et al. 2021, sec. 4)";
  e.capabilities = {.causal = true, .bidirectional = true, .padding_mask = true, .recurrent = true};
  e.reference = "routing";
  e.options = routing_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_routing_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<RoutingAttention>(c);
  };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) { return routing_attention_functional(q, k, v, opts, args); };
  return e;
}

RoutingAttention::RoutingAttention(const MechanismConfig& config)
    : RoutingAttention(config, parse_routing_options(config.options, config.positions)) {}

RoutingAttention::RoutingAttention(const MechanismConfig& config, RoutingOptions options)
    : ProjectedAttention("RoutingAttention", "routing", config, options.multi_head,
                         ProjectionSpec{.shared_qk = true}),
      options_(std::move(options)) {
  EF_CHECK(options_.clusters > 0 || config.max_len > 0, ValueError, label(),
           ": needs max_len (the model's context) or the option clusters to fix its centroids");
  check_balance_causal(label(), options_.balance, config.causal);
  EF_CHECK(options_.local_heads <= H_, ValueError, label(), ": option local_heads = ", options_.local_heads,
           "; expected at most n_heads = ", H_);
  clusters_ = options_.clusters > 0
                  ? options_.clusters
                  : std::clamp<int64_t>(std::llround(double(config.max_len) / double(options_.window)), 1,
                                        kMaxClusters);
  if (options_.seed < 0) {  // from the default generator, so a model is reproducible from manual_seed
    rng::Generator& g = rng::default_generator();
    const auto w = rng::philox(g.state().seed, g.state().stream, g.reserve(1));
    options_.seed = int64_t((uint64_t(w[0]) << 32 | w[1]) >> 1);
  }
  rng::Generator gen(uint64_t(options_.seed));
  centroids_ = &register_buffer("centroids", draw_routing_centroids(H_, clusters_, d_, gen));
}

std::string RoutingAttention::describe() const {
  return detail::concat("RoutingAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", clusters=", clusters_,
                        ", window=", options_.window, ", balance=", balance_name(options_.balance),
                        ", decay=", options_.decay,
                        ", local_heads=", options_.local_heads, ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Tensor RoutingAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);  // shared-QK: h.k is h.q (normalized in the kernel)
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  if (!is_training())
    return output(routing_attention_balanced(h.q, h.k, h.v, *centroids_, options_, opts));
  rng::Generator& g = rng::default_generator();
  const rng::Generator::State mark = g.state();
  g.reserve(1);
  if (last_mark_ && *last_mark_ == mark)  // a replay: the same routing, no second update
    return output(routing_attention_balanced(h.q, h.k, h.v, last_centroids_, options_, opts));
  ClusterSums stats;
  const Tensor used = *centroids_;
  Tensor out = routing_attention_balanced(h.q, h.k, h.v, used, options_, opts, &stats);
  *centroids_ = routing_ema(used, stats, float(options_.decay));  // after the forward: nothing above saw it
  last_mark_ = mark, last_centroids_ = used;
  return output(out);
}

std::unique_ptr<RecurrentState> RoutingAttention::start_native(int64_t) const {
  return std::make_unique<BucketCache>(2 * options_.window - 1);
}

Tensor RoutingAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& st = static_cast<BucketCache&>(state);
  const Heads h = project_step(x_t, st.length());
  const Tensor q = h.q.contiguous_data(), v = h.v.contiguous_data(), mu = centroids_->contiguous_data();
  const int64_t B = q.size(0), T = q.size(2), d = d_, c = clusters_;
  const float scale = 1.0f / std::sqrt(float(d));
  Tensor out = Tensor::empty({B, H_, T, d});
  std::vector<float> kn(static_cast<size_t>(d));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hd = 0; hd < H_; ++hd) {
        const int64_t row = (b * H_ + hd) * T + t;
        const float *qi = q.data<float>() + row * d, *vi = v.data<float>() + row * d;
        float* o = out.data<float>() + row * d;
        kernels::lsh_normalize_row(qi, kn.data(), d);
        int32_t cluster = 0;
        if (hd < H_ - options_.local_heads)
          kernels::nearest_centroid_rows(kn.data(), 1, d, mu.data<float>() + hd * c * d, c, &cluster);
        const float lse = st.attend_then_append((b * H_ + hd) * c + cluster, qi, kn.data(), vi, d, scale, o);
        if (lse == -std::numeric_limits<float>::infinity()) std::copy(vi, vi + d, o);  // nothing else: itself
      }
  st.tokens += T;
  return output(out);
}

}  // namespace eformer::attention
