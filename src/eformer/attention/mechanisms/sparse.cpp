#include "eformer/attention/mechanisms/sparse.h"

#include <map>
#include <mutex>
#include <utility>

#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

// The streaming state: K, V [B, H, T, d] (undefined before the first step).
struct SparseKVCache : RecurrentState {
  Tensor k, v;
  int64_t length() const override { return k.defined() ? k.size(2) : 0; }
};

std::vector<OptionSpec> all_option_specs(const SparseSpec& spec) {
  std::vector<OptionSpec> all = spec.options;
  for (const OptionSpec& o : multi_head_option_specs()) all.push_back(o);
  return all;
}

// The module's options: the multi-head ones into `heads`, the rest to the mechanism's parser.
SparsePatternMaker parse_module_options(const SparseSpec& spec, const nlohmann::json& options,
                                        const std::string& positions, MultiHeadOptions& heads) {
  const std::string who = "attention '" + spec.name + "'";
  EF_CHECK(options.is_object(), ValueError, who, ": options must be a JSON object, got ", options.dump());
  heads = MultiHeadOptions{};
  heads.rotary = positions == "rotary";
  nlohmann::json own = nlohmann::json::object();
  for (const auto& [key, value] : options.items())
    if (!parse_multi_head_option(who, key, value, heads)) own[key] = value;
  return spec.parse(who, own, all_option_specs(spec));
}

// Every spec sparse_entry has made, by name (for sparse_layout_of).
std::map<std::string, SparseSpec>& specs() {
  static std::map<std::string, SparseSpec> all;
  return all;
}
std::mutex& specs_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

kernels::LayoutParts sparse_layout_of(const std::string& name, int64_t N, int64_t M, int64_t heads,
                                      bool causal, const MechanismArgs& args, uint64_t seed) {
  (void)mechanisms();  // the registry's entries (made on first use) register their specs
  SparseSpec spec;
  {
    std::lock_guard<std::mutex> lock(specs_mutex());
    auto it = specs().find(name);
    std::string valid;
    for (const auto& [n, s] : specs()) valid += (valid.empty() ? "" : ", ") + n;
    EF_CHECK(it != specs().end(), ValueError, "attention_layout: '", name,
             "' is not a block-sparse mechanism; block-sparse mechanisms: ", valid);
    spec = it->second;
  }
  EF_CHECK(N >= 1 && M >= 1 && heads >= 1, ValueError, "attention_layout: n = ", N, ", m = ", M,
           ", heads = ", heads, "; expected each >= 1");
  const std::string who = "attention_layout '" + name + "'";
  options::check_tensors(who, args, {});
  return sparse_layout(spec.parse(who, args.options, spec.options), N, M, heads, causal, seed);
}

kernels::LayoutParts sparse_layout(const SparsePatternMaker& maker, int64_t N, int64_t M, int64_t heads,
                                   bool causal, uint64_t seed, int64_t block, bool cache) {
  const std::string key = detail::concat(maker.key, " n=", N, " m=", M, " heads=", heads,
                                         " causal=", causal ? 1 : 0, " seed=", seed, " block=", block);
  auto build = [&] {
    SparsePattern p = maker.make(N, M, heads, causal, seed);
    kernels::LayoutParts parts;
    if (p.parts.empty())
      parts.push_back(std::make_shared<const kernels::BlockSparseLayout>(
          kernels::build_layout(N, M, block, p.heads, p.allowed, p.candidates)));
    for (SparsePart& part : p.parts)
      parts.push_back(std::make_shared<const kernels::BlockSparseLayout>(
          kernels::build_layout(N, M, block, p.heads, part.allowed, part.candidates,
                                std::move(part.query_index), std::move(part.key_index))));
    return parts;
  };
  return cache ? kernels::cached_layouts(key, build) : build();
}

MechanismEntry sparse_entry(const SparseSpec& spec) {
  {
    std::lock_guard<std::mutex> lock(specs_mutex());
    specs()[spec.name] = spec;
  }
  MechanismEntry e;
  e.name = spec.name;
  e.description = spec.description;
  e.capabilities = {
      .causal = true, .bidirectional = true, .padding_mask = true, .recurrent = true, .dropout = true};
  e.reference = "softmax-pattern";
  e.options = all_option_specs(spec);
  e.check_options = [spec](const nlohmann::json& o) {
    MultiHeadOptions heads;
    parse_module_options(spec, o, "none", heads);
  };
  e.make = [spec](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<SparseAttention>(spec, c);
  };
  e.functional = [spec](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                        const MechanismArgs& args) {
    const std::string who = "attention '" + spec.name + "'";
    options::check_tensors(who, args, {});
    const SparsePatternMaker maker = spec.parse(who, args.options, spec.options);
    const AttentionDims s = validate_attention(who.c_str(), q, k, v, opts);
    return block_sparse_attention(q, k, v, opts, sparse_layout(maker, s.N, s.M, s.H, opts.causal, 0));
  };
  e.pattern = [spec](int64_t N, int64_t M, int64_t heads, bool causal, const MechanismArgs& args,
                     uint64_t seed) {
    const std::string who = "attention_pattern '" + spec.name + "'";
    options::check_tensors(who, args, {});
    const SparsePattern p = spec.parse(who, args.options, spec.options).make(N, M, heads, causal, seed);
    Tensor t = Tensor::zeros({heads, N, M}, DType::Bool);
    bool* out = t.data<bool>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < M; ++j) out[(h * N + i) * M + j] = p.allowed(h % p.heads, i, j);
    return t;
  };
  return e;
}

SparseAttention::SparseAttention(const SparseSpec& spec, const MechanismConfig& config)
    : ProjectedAttention("SparseAttention", spec.name, config, MultiHeadOptions{}),
      layer_seed_(uint64_t(std::max<int64_t>(config.layer, 0))) {
  maker_ = parse_module_options(spec, config.options, config.positions, heads_);
  // Rotary needs an even head dim (ProjectedAttention checked it for the default only).
  EF_CHECK(!heads_.rotary || d_ % 2 == 0, ValueError, label(),
           ": rotary needs an even head dim; d_model / n_heads = ", d_);
}

std::string SparseAttention::describe() const {
  return detail::concat("SparseAttention(kind=", name(), ", d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", pattern=", maker_.key,
                        ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Tensor SparseAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  const int64_t N = h.q.size(2), M = h.k.size(2);
  return output(
      block_sparse_attention(h.q, h.k, h.v, opts, sparse_layout(maker_, N, M, H_, opts.causal, layer_seed_)));
}

std::unique_ptr<RecurrentState> SparseAttention::start_native(int64_t) const {
  return std::make_unique<SparseKVCache>();
}

Tensor SparseAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& cache = static_cast<SparseKVCache&>(state);
  const Heads h = project_step(x_t, cache.length());
  cache.k = cache.k.defined() ? cat({cache.k, h.k}, 2) : contiguous(h.k);
  cache.v = cache.v.defined() ? cat({cache.v, h.v}, 2) : contiguous(h.v);
  AttentionOptions opts;
  opts.causal = true;  // the new queries sit at positions M - T .. M - 1
  opts.dropout = active_dropout();
  const int64_t N = h.q.size(2), M = cache.k.size(2);
  return output(block_sparse_attention(
      h.q, cache.k, cache.v, opts,
      sparse_layout(maker_, N, M, H_, true, layer_seed_, kernels::block_sparse_block(), /*cache=*/false)));
}

}  // namespace eformer::attention
