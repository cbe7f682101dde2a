#include "eformer/attention/mechanisms/lsh.h"

#include <cmath>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/lsh.h"
#include "eformer/attention/mechanisms/bucket_cache.h"
#include "eformer/core/rng.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'lsh'";
constexpr int64_t kMaxBuckets = int64_t(1) << 20;

std::vector<OptionSpec> lsh_option_specs() {
  std::vector<OptionSpec> specs = {
      {"bucket_size", "int", "64", "target keys per bucket: n_buckets = 2^round(log2(max_len / bucket_size)), >= 2"},
      {"n_buckets", "int", "from bucket_size", "hash buckets, a power of two (overrides bucket_size; 1: no hashing, so with chunk >= N exact shared-QK attention)"},
      {"n_hashes", "int", "4", "hashing rounds, combined by log-sum-exp (Reformer sec. 2)"},
      {"chunk", "int", "64", "sorted chunk length c (bidirectional: own + previous chunk; causal: own bucket "
                             "within 2c - 1 earlier sorted keys)"},
      {"redraw", "bool", "true", "new rotations at every training forward (false: fixed, from seed)"},
      {"seed", "int", "from the default generator", "the layer's rotation seed"},
  };
  for (auto& spec : multi_head_option_specs()) specs.push_back(spec);
  return specs;
}

// Parses one of the options the module and the functional form share; false for other keys.
bool parse_shared_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                         LshOptions& o) {
  if (key == "bucket_size")
    o.bucket_size = options::get_int(who, key, value, 1);
  else if (key == "n_buckets")
    o.n_buckets = options::get_int(who, key, value, 1, kMaxBuckets);
  else if (key == "n_hashes")
    o.n_hashes = options::get_int(who, key, value, 1, 64);
  else if (key == "chunk")
    o.chunk = options::get_int(who, key, value, 1, 1 << 16);
  else
    return false;
  if (key == "n_buckets")
    EF_CHECK((o.n_buckets & (o.n_buckets - 1)) == 0, ValueError, who, ": option n_buckets = ", o.n_buckets,
             "; expected a power of two");
  return true;
}

}  // namespace

int64_t lsh_default_buckets(int64_t n, int64_t bucket_size) {
  const double ratio = double(n) / double(bucket_size);
  if (ratio <= 2.0) return 2;
  const int64_t e = std::llround(std::log2(ratio));
  return std::min<int64_t>(kMaxBuckets, std::max<int64_t>(2, int64_t(1) << std::min<int64_t>(e, 20)));
}

Tensor draw_lsh_rotations(int64_t n_hashes, int64_t heads, int64_t d, int64_t n_buckets, rng::Generator& gen) {
  Tensor r = Tensor::empty({n_hashes, heads, d, kernels::lsh_rotation_columns(n_buckets)});
  rng::normal_(r.data<float>(), r.numel(), gen);
  return r;
}

LshOptions parse_lsh_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  LshOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_shared_option(kWho, key, value, o) || parse_multi_head_option(kWho, key, value, o.multi_head)) continue;
    if (key == "redraw")
      o.redraw = options::get_bool(kWho, key, value);
    else if (key == "seed")
      o.seed = options::get_int(kWho, key, value, 0, std::numeric_limits<int64_t>::max());
    else
      options::unknown(kWho, key, lsh_option_specs());
  }
  return o;
}

Tensor lsh_attention_functional(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                const MechanismArgs& args) {
  const std::string who = "lsh_attention";
  EF_CHECK(args.options.is_object(), ValueError, who, ": options must be a JSON object");
  LshOptions o;
  bool hashes_given = false, buckets_given = false;
  for (const auto& [key, value] : args.options.items()) {
    if (!parse_shared_option(who, key, value, o))
      throw ValueError(detail::concat(who, ": unknown option '", key,
                                      "'; valid options: bucket_size, n_buckets, n_hashes, chunk"));
    hashes_given |= key == "n_hashes";
    buckets_given |= key == "n_buckets";
  }
  options::check_tensors(who, args, {"rotations"});
  const AttentionDims dims = validate_attention(who.c_str(), q, k, v, opts);
  const auto given = args.tensors.find("rotations");
  Tensor rotations;
  int64_t n_buckets = buckets_given ? o.n_buckets : lsh_default_buckets(dims.N, o.bucket_size);
  if (given != args.tensors.end()) {
    rotations = given->second.detach();
    EF_CHECK(rotations.dim() == 4, ShapeError, who, ": rotations is ", rotations.describe(),
             "; expected [n_hashes, heads, head_dim, columns]");
    EF_CHECK(!hashes_given || rotations.size(0) == o.n_hashes, ValueError, who, ": option n_hashes = ",
             o.n_hashes, " but rotations has ", rotations.size(0), " rounds");
    // Without n_buckets, unfactored rotations say it: n_buckets = 2 x their columns.
    if (!buckets_given) n_buckets = 2 * rotations.size(3);
    EF_CHECK(buckets_given || n_buckets <= kernels::kMaxUnfactoredBuckets, ValueError, who, ": rotations has ",
             rotations.size(3), " columns; above ", kernels::kMaxUnfactoredBuckets,
             " buckets they are factorized: pass n_buckets");
  } else {
    rotations = draw_lsh_rotations(o.n_hashes, dims.H, dims.d, n_buckets, rng::default_generator());
  }
  return lsh_attention(q, k, v, rotations, n_buckets, o.chunk, opts);
}

MechanismEntry lsh_entry() {
  MechanismEntry e;
  e.name = "lsh";
  e.description = "Reformer LSH attention: shared-QK, angular hashing, sorted chunks, n_hashes rounds "
                  "(Kitaev et al. 2020, sec. 2)";
  e.capabilities = {.causal = true, .bidirectional = true, .padding_mask = true, .recurrent = true};
  e.reference = "lsh";
  e.options = lsh_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_lsh_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> { return std::make_shared<LshAttention>(c); };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) { return lsh_attention_functional(q, k, v, opts, args); };
  return e;
}

LshAttention::LshAttention(const MechanismConfig& config)
    : LshAttention(config, parse_lsh_options(config.options, config.positions)) {}

LshAttention::LshAttention(const MechanismConfig& config, LshOptions options)
    : ProjectedAttention("LshAttention", "lsh", config, options.multi_head, ProjectionSpec{.shared_qk = true}),
      options_(std::move(options)) {
  EF_CHECK(options_.n_buckets > 0 || config.max_len > 0, ValueError, label(),
           ": needs max_len (the model's context) or the option n_buckets to fix its buckets");
  n_buckets_ = options_.n_buckets > 0 ? options_.n_buckets : lsh_default_buckets(config.max_len, options_.bucket_size);
  if (options_.seed < 0) {  // from the default generator, so a model is reproducible from manual_seed
    rng::Generator& g = rng::default_generator();
    const auto w = rng::philox(g.state().seed, g.state().stream, g.reserve(1));
    options_.seed = int64_t((uint64_t(w[0]) << 32 | w[1]) >> 1);
  }
  rng::Generator gen(uint64_t(options_.seed));
  rotations_ = &register_buffer("rotations", draw_lsh_rotations(options_.n_hashes, H_, d_, n_buckets_, gen));
}

std::string LshAttention::describe() const {
  return detail::concat("LshAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", n_buckets=", n_buckets_,
                        ", n_hashes=", options_.n_hashes, ", chunk=", options_.chunk,
                        ", redraw=", options_.redraw ? "true" : "false", ", rotary=", heads_.rotary ? "true" : "false",
                        ")");
}

Tensor LshAttention::rotations_now() {
  if (is_training() && options_.redraw)
    *rotations_ = draw_lsh_rotations(options_.n_hashes, H_, d_, n_buckets_, rng::default_generator());
  return *rotations_;
}

Tensor LshAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);  // shared-QK: h.k is h.q (normalized in the kernel)
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  return output(lsh_attention(h.q, h.k, h.v, rotations_now(), n_buckets_, options_.chunk, opts));
}

std::unique_ptr<RecurrentState> LshAttention::start_native(int64_t) const {
  return std::make_unique<BucketCache>(2 * options_.chunk - 1);
}

Tensor LshAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& st = static_cast<BucketCache&>(state);
  const Heads h = project_step(x_t, st.length());
  const Tensor q = h.q.contiguous_data(), v = h.v.contiguous_data();
  const Tensor R = rotations_->contiguous_data();
  const int64_t B = q.size(0), T = q.size(2), d = d_, nh = options_.n_hashes;
  const int64_t columns = kernels::lsh_rotation_columns(n_buckets_);
  const float scale = 1.0f / std::sqrt(float(d));
  Tensor out = Tensor::empty({B, H_, T, d});
  std::vector<float> kn(static_cast<size_t>(d)), o_r(static_cast<size_t>(d));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hd = 0; hd < H_; ++hd) {
        const float* qi = q.data<float>() + ((b * H_ + hd) * T + t) * d;
        const float* vi = v.data<float>() + ((b * H_ + hd) * T + t) * d;
        float* o = out.data<float>() + ((b * H_ + hd) * T + t) * d;
        kernels::lsh_normalize_row(qi, kn.data(), d);
        float L = -std::numeric_limits<float>::infinity();
        std::fill(o, o + d, 0.0f);
        for (int64_t r = 0; r < nh; ++r) {
          int32_t bucket = 0;
          kernels::lsh_hash_rows(kn.data(), 1, d, R.data<float>() + (r * H_ + hd) * d * columns, n_buckets_,
                                 &bucket);
          const int64_t slot = ((b * H_ + hd) * nh + r) * n_buckets_ + bucket;
          const float lse_r = st.attend_then_append(slot, qi, kn.data(), vi, d, scale, o_r.data());
          kernels::lsh_merge_round(o, L, o_r.data(), lse_r, d);  // rounds in order, as the parallel pass
        }
        if (L == -std::numeric_limits<float>::infinity()) std::copy(vi, vi + d, o);  // nothing else: itself
      }
  st.tokens += T;
  return output(out);
}

}  // namespace eformer::attention
