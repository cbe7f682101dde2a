#include "eformer/attention/mechanisms/sinkhorn.h"

#include <cmath>
#include <tuple>
#include <vector>

#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/core/rng.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/ops.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'sinkhorn'";
constexpr float kMasked = -1e30f;  // a logit that exp() sends to 0 without inf arithmetic

std::vector<OptionSpec> sinkhorn_option_specs() {
  std::vector<OptionSpec> specs = {
      {"block", "int", "64", "block size b: n = ceil(N / b) blocks are sorted"},
      {"iterations", "int", "8", "Sinkhorn balancing iterations"},
      {"temperature", "number", "0.75", "Gumbel-Sinkhorn temperature tau > 0"},
      {"gumbel", "bool", "true", "Gumbel noise on the sorting logits in training mode (never in evaluation)"},
      {"sortcut", "int", "0",
       "SortCut (encoder only): attend the first n sorted blocks (0: off, sorted block i)"},
      {"hidden", "int", "head dim", "hidden width of the sorting network"},
  };
  for (auto& spec : multi_head_option_specs()) specs.push_back(spec);
  return specs;
}

// The options the module and the functional form share; false for other keys.
bool parse_shared_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                         SinkhornOptions& o) {
  if (key == "block") {
    o.block = options::get_int(who, key, value, 1, 1 << 16);
  } else if (key == "iterations") {
    o.iterations = options::get_int(who, key, value, 1, 1000);
  } else if (key == "temperature") {
    o.temperature = options::get_number(who, key, value);
    EF_CHECK(o.temperature > 0, ValueError, who, ": option temperature = ", value.dump(),
             "; expected a number > 0");
  } else if (key == "sortcut") {
    o.sortcut = options::get_int(who, key, value, 0, 1 << 16);
  } else {
    return false;
  }
  return true;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The exact layout over keys [sorted slots (S), K (N)]: query i attends the sorted slots of its block
// (all S slots with SortCut) and its own block of K (j <= i when causal). kb: the kernel's block.
kernels::LayoutParts sinkhorn_layout(int64_t N, int64_t S, int64_t b, bool sortcut, bool causal) {
  const int64_t kb = kernels::block_sparse_block();
  const std::string key = detail::concat("sinkhorn n=", N, " s=", S, " b=", b, " sortcut=", sortcut ? 1 : 0,
                                         " causal=", causal ? 1 : 0, " block=", kb);
  return kernels::cached_layouts(key, [&] {
    auto allowed = [=](int64_t, int64_t i, int64_t j) {
      if (j < S) return sortcut || j / b == i / b;
      const int64_t jj = j - S;
      return jj / b == i / b && (!causal || jj <= i);
    };
    auto candidates = [=](int64_t, int64_t qb, int64_t block, std::vector<int64_t>& out) {
      const int64_t r0 = qb * block, r1 = std::min(N, r0 + block);
      const int64_t lo = (r0 / b) * b, hi = std::min(N, ((r1 - 1) / b + 1) * b);
      const int64_t s_lo = sortcut ? 0 : lo, s_hi = sortcut ? S : std::min(S, hi);
      for (int64_t c = s_lo / block; c * block < s_hi; ++c) out.push_back(c);
      for (int64_t c = (S + lo) / block; c * block < S + hi; ++c) out.push_back(c);
    };
    return kernels::LayoutParts{std::make_shared<const kernels::BlockSparseLayout>(
        kernels::build_layout(N, S + N, kb, 1, allowed, candidates))};
  });
}

// Bool [B, S + N]: the sorted slots that some block they may mix holds a real key at (the module's
// padding rule, sinkhorn.h), then the key mask. `rows` sorted blocks of b slots; block r mixes every
// block (bidirectional) or the blocks j < r (causal).
Tensor sinkhorn_key_mask(const Tensor& key_mask, int64_t B, int64_t N, int64_t b, int64_t rows, bool causal) {
  const int64_t n = ceil_div(N, b), S = rows * b;
  Tensor km = key_mask.defined() ? key_mask.contiguous_data() : Tensor();
  Tensor out = Tensor::zeros({B, S + N}, DType::Bool);
  bool* o = out.data<bool>();
  for (int64_t bi = 0; bi < B; ++bi) {
    auto real = [&](int64_t pos) { return pos < N && (!km.defined() || km.data<bool>()[bi * N + pos]); };
    for (int64_t t = 0; t < b; ++t) {
      // seen: some block j < r (causal) or any block (bidirectional) is real at offset t.
      bool any = false;
      for (int64_t j = 0; j < n && !causal; ++j) any = any || real(j * b + t);
      bool seen = false;
      for (int64_t r = 0; r < rows; ++r) {
        o[bi * (S + N) + r * b + t] = causal ? seen : any;
        if (causal && r < n) seen = seen || real(r * b + t);
      }
    }
    for (int64_t j = 0; j < N; ++j) o[bi * (S + N) + S + j] = real(j);
  }
  return out;
}

void check_network(const std::string& who, const SortNetwork& net, int64_t H, int64_t d) {
  for (const auto& [name, t, dims] : {std::tuple<const char*, const Tensor&, int64_t>{"sort_w1", net.w1, 3},
                                      {"sort_b1", net.b1, 2},
                                      {"sort_w2", net.w2, 3},
                                      {"sort_b2", net.b2, 2}}) {
    EF_CHECK(t.defined(), ValueError, who, ": the sorting network tensor ", name, " is missing");
    EF_CHECK(t.dtype() == DType::Float32 && t.dim() == dims && t.size(0) == H, ShapeError, who, ": ", name,
             " is ", t.describe(), "; expected float32 with ", dims, " dims and ", H, " heads first");
  }
  const int64_t hidden = net.w1.size(2), n_max = net.w2.size(2);
  EF_CHECK(
      net.w1.size(1) == d && net.b1.size(1) == hidden && net.w2.size(1) == hidden && net.b2.size(1) == n_max,
      ShapeError, who, ": sorting network shapes sort_w1 ", net.w1.describe(), ", sort_b1 ",
      net.b1.describe(), ", sort_w2 ", net.w2.describe(), ", sort_b2 ", net.b2.describe(),
      " do not fit head dim ", d, "; expected [H, d, hidden], [H, hidden], [H, hidden, n_max], [H, n_max]");
}

}  // namespace

SinkhornOptions parse_sinkhorn_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  SinkhornOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_shared_option(kWho, key, value, o) || parse_multi_head_option(kWho, key, value, o.multi_head))
      continue;
    if (key == "gumbel")
      o.gumbel = options::get_bool(kWho, key, value);
    else if (key == "hidden")
      o.hidden = options::get_int(kWho, key, value, 1, 1 << 16);
    else
      options::unknown(kWho, key, sinkhorn_option_specs());
  }
  return o;
}

Tensor sinkhorn_balance(const Tensor& logits, int64_t iterations, bool causal) {
  const int64_t n = logits.size(-1);
  if (!causal) {
    Tensor x = logits;
    for (int64_t it = 0; it < iterations; ++it) x = log_softmax(log_softmax(x, -1), -2);  // F_c(F_r(X))
    return exp(x);
  }
  Tensor future = Tensor::zeros({n, n}, DType::Bool);  // true where j >= i: not selectable
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) future.data<bool>()[i * n + j] = true;
  Tensor x = masked_fill(logits, future, kMasked);
  for (int64_t it = 0; it < iterations; ++it) {
    // Causal column normalization: X_ij - log sum_{k <= i} exp(X_kj) (a running maximum: logits of a
    // trained model pass exp's range); then the rows (log_softmax).
    x = sub(x, logcumsumexp(x, -2));
    x = masked_fill(log_softmax(masked_fill(x, future, kMasked), -1), future, kMasked);
  }
  return masked_fill(exp(x), future, 0.0f);
}

Tensor draw_gumbel(int64_t B, int64_t H, int64_t n) {
  Tensor g = Tensor::empty({B, H, n, n});
  float* p = g.data<float>();
  rng::uniform_(p, g.numel());
  for (int64_t e = 0; e < g.numel(); ++e) p[e] = -std::log(-std::log(p[e] + 1e-20f) + 1e-20f);
  return g;
}

Tensor sinkhorn_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                          const SortNetwork& net, const SinkhornOptions& o, const Tensor& gumbel,
                          Tensor* permutation) {
  const std::string who = "sinkhorn_attention";
  const AttentionDims s = validate_attention(who.c_str(), q, k, v, opts);
  EF_CHECK(s.M == s.N, ShapeError, who, ": k has ", s.M, " rows but q has ", s.N,
           "; sinkhorn is self-attention only (the blocks of q sort the blocks of k)");
  EF_CHECK(opts.dropout == 0.0f, ValueError, who, ": dropout = ", opts.dropout,
           "; sinkhorn has no attention dropout");
  EF_CHECK(!(opts.causal && o.sortcut > 0), ValueError, who, ": option sortcut = ", o.sortcut,
           " is encoder-only (SortCut attends sorted blocks from anywhere); use 0 with causal");
  check_network(who, net, s.H, s.d);
  const int64_t B = s.B, H = s.H, N = s.N, d = s.d, b = o.block, n = ceil_div(N, b);
  EF_CHECK(n <= net.w2.size(2), ValueError, who, ": ", N, " tokens make ", n, " blocks of ", b,
           " but the sorting network has ", net.w2.size(2), " outputs (max_len / block)");
  EF_CHECK(!gumbel.defined() || gumbel.shape() == (Shape{B, H, n, n}), ShapeError, who, ": gumbel is ",
           gumbel.describe(), "; expected [", B, ", ", H, ", ", n, ", ", n, "]");

  // Keys and values with padding zeroed, padded to n b rows (blocks of b rows).
  Tensor kz = k, vz = v;
  if (opts.key_mask.defined()) {
    Tensor real = where(reshape(opts.key_mask, {B, 1, N, 1}), Tensor::full({1}, 1.0), Tensor::zeros({1}));
    kz = mul(k, real), vz = mul(v, real);
  }
  if (n * b > N) {
    Tensor pad = Tensor::zeros({B, H, n * b - N, d});
    kz = cat({kz, pad}, 2), vz = cat({vz, pad}, 2);
  }

  // Without padding, mask or SortCut (and P not asked for): the permutation, the mixing and the attention
  // as one node.
  const bool own = !opts.key_mask.defined() && n * b == N;  // the blocks are the local keys themselves
  const kernels::SinkhornSortSizes sizes{n, o.iterations, float(1.0 / o.temperature), opts.causal};
  if (own && o.sortcut == 0 && !permutation)
    return kernels::sinkhorn_block_attention(q, k, v, {net.w1, net.b1, net.w2, net.b2}, gumbel, sizes, b,
                                             s.scale);

  // P from the block key sums (causal: the previous block's) through the SortNet and the balancing.
  const Tensor P = kernels::sinkhorn_permutation(kz, b, net.w1, net.b1, net.w2, net.b2, gumbel, sizes);
  if (permutation) *permutation = P;

  // Each query block sees exactly its sorted block sum_j P_ij K_j (V likewise) and its own: one fused
  // node, unless padding or SortCut need the general block-sparse layout and its key mask.
  if (own && o.sortcut == 0) return kernels::mixed_block_attention(q, k, v, P, b, s.scale, opts.causal);
  // Sorted blocks (SortCut: the first `sortcut` of them, shared by every query block), written beside K
  // (and V) as the keys the block-sparse kernel reads.
  const int64_t rows = o.sortcut > 0 ? std::min(o.sortcut, n) : n;
  Tensor P_rows = rows < n ? contiguous(slice(P, 2, 0, rows)) : P;
  Tensor keys = own ? kernels::sorted_then_own(P_rows, k, b, opts.causal)
                    : kernels::sorted_then_local(P_rows, kz, k, b, opts.causal);
  Tensor values = own ? kernels::sorted_then_own(P_rows, v, b, opts.causal)
                      : kernels::sorted_then_local(P_rows, vz, v, b, opts.causal);
  AttentionOptions inner;
  inner.scale = s.scale;
  // Without padding, every bidirectional slot is real: no mask (the kernel's unmasked path).
  if (opts.key_mask.defined() || n * b > N || opts.causal)
    inner.key_mask = sinkhorn_key_mask(opts.key_mask, B, N, b, rows, opts.causal);
  return block_sparse_attention(q, keys, values, inner,
                                sinkhorn_layout(N, rows * b, b, o.sortcut > 0, opts.causal));
}

MechanismEntry sinkhorn_entry() {
  MechanismEntry e;
  e.name = "sinkhorn";
  e.description =
      "Sparse Sinkhorn attention: learned block sorting by Gumbel-Sinkhorn balancing, each block "
      "attends its sorted block and itself (Tay et al. 2020)";
  e.capabilities = {
      .causal = true, .bidirectional = true, .padding_mask = true, .recurrent = true, .fixed_length = true};
  e.reference = "sinkhorn";
  e.options = sinkhorn_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_sinkhorn_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<SinkhornAttention>(c);
  };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) {
    const std::string who = "attention 'sinkhorn'";
    EF_CHECK(args.options.is_object(), ValueError, who, ": options must be a JSON object");
    SinkhornOptions o;
    for (const auto& [key, value] : args.options.items())
      if (!parse_shared_option(who, key, value, o))
        throw ValueError(detail::concat(who, ": unknown option '", key,
                                        "'; valid options: block, iterations, temperature, sortcut"));
    options::check_tensors(who, args, {"sort_w1", "sort_b1", "sort_w2", "sort_b2", "gumbel"});
    auto get = [&](const char* name) {
      auto it = args.tensors.find(name);
      return it == args.tensors.end() ? Tensor() : it->second;
    };
    return sinkhorn_attention(q, k, v, opts, {get("sort_w1"), get("sort_b1"), get("sort_w2"), get("sort_b2")},
                              o, get("gumbel"));
  };
  return e;
}

SinkhornAttention::SinkhornAttention(const MechanismConfig& config)
    : SinkhornAttention(config, parse_sinkhorn_options(config.options, config.positions)) {}

SinkhornAttention::SinkhornAttention(const MechanismConfig& config, SinkhornOptions options)
    : ProjectedAttention("SinkhornAttention", "sinkhorn", config, options.multi_head),
      options_(std::move(options)) {
  EF_CHECK(!(config.causal && options_.sortcut > 0), ValueError, label(),
           ": option sortcut = ", options_.sortcut, " is encoder-only; a causal layer needs sortcut = 0");
  const int64_t hidden = options_.hidden > 0 ? options_.hidden : d_;
  const int64_t n_max = ceil_div(config.max_len, options_.block);
  net_.w1 = register_parameter("sort_w1", nn::normal_init({H_, d_, hidden}, 1.0f / std::sqrt(float(d_))));
  net_.b1 = register_parameter("sort_b1", Tensor::zeros({H_, hidden}));
  net_.w2 =
      register_parameter("sort_w2", nn::normal_init({H_, hidden, n_max}, 1.0f / std::sqrt(float(hidden))));
  net_.b2 = register_parameter("sort_b2", Tensor::zeros({H_, n_max}));
}

std::string SinkhornAttention::describe() const {
  return detail::concat("SinkhornAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", ", block=", options_.block,
                        ", iterations=", options_.iterations, ", temperature=", options_.temperature,
                        ", sortcut=", options_.sortcut, ", rotary=", heads_.rotary ? "true" : "false", ")");
}

Tensor SinkhornAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  const int64_t B = x.size(0), n = ceil_div(x.size(1), options_.block);
  const Tensor noise = is_training() && options_.gumbel ? draw_gumbel(B, H_, n) : Tensor();
  return output(sinkhorn_attention(h.q, h.k, h.v, opts, net_, options_, noise));
}

}  // namespace eformer::attention
