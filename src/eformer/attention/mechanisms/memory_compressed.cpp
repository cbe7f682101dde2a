#include "eformer/attention/mechanisms/memory_compressed.h"

#include <algorithm>
#include <cmath>

#include "eformer/attention/kernels/compressed_local.h"
#include "eformer/attention/kernels/per_head_matmul.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const char* const kWho = "attention 'memory_compressed'";

std::vector<OptionSpec> memory_compressed_option_specs() {
  std::vector<OptionSpec> specs = {
      {"compression", "int", "3", "c: keys and values compressed by a conv of kernel = stride = c"},
      {"block", "int", "256", "the local block: a query attends its own block's keys exactly"}};
  for (auto& s : multi_head_option_specs()) specs.push_back(s);
  return specs;
}

// The strided convolution of x [B, H, M, d] with w [H, c, d, d] (+ bias [H, d]): [B, H, floor(M / c), d].
Tensor compress(const Tensor& x, const Tensor& w, const Tensor& bias, int64_t windows) {
  const int64_t B = x.size(0), H = x.size(1), d = x.size(3), c = w.size(1);
  const Tensor rows = reshape(slice(x, 2, 0, windows * c), {B, H, windows, c * d});
  const Tensor y = per_head_right(rows, reshape(w, {H, c * d, d}));
  return bias.defined() ? add(y, reshape(bias, {1, H, 1, d})) : y;
}

Tensor pad_rows(const Tensor& x, int64_t rows) {
  if (x.size(2) == rows) return x;
  return cat({x, Tensor::zeros({x.size(0), x.size(1), rows - x.size(2), x.size(3)})}, 2);
}

// The joint softmax over the compressed windows and the query's block (the header's formula), fused
// (kernels/compressed_local.h): rows padded to whole blocks, windows from the strided convolution.
Tensor compressed_and_local(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_conv,
                            const Tensor& k_bias, const Tensor& v_conv, const Tensor& v_bias, int64_t block,
                            bool causal, float scale) {
  const int64_t N = q.size(2), c = k_conv.size(1), W = N / c, S = std::min(block, N), Np = (N + S - 1) / S * S;
  const Tensor none = Tensor::zeros({q.size(0), q.size(1), 0, q.size(3)});  // N < c: no window
  const Tensor kc = W > 0 ? compress(k, k_conv, k_bias, W) : none, vc = W > 0 ? compress(v, v_conv, v_bias, W) : none;
  const Tensor y =
      compressed_local_attention(pad_rows(q, Np), pad_rows(k, Np), pad_rows(v, Np), kc, vc, N, S, c, causal, scale);
  return Np == N ? y : slice(y, 2, 0, N);
}

void check_conv(const char* name, const Tensor& w, int64_t H, int64_t d, int64_t c) {
  EF_CHECK(w.dtype() == DType::Float32 && w.dim() == 4 && w.size(0) == H && w.size(1) >= 1 &&
               (c < 0 || w.size(1) == c) && w.size(2) == d && w.size(3) == d,
           ShapeError, kWho, ": ", name, " is ", w.describe(), "; expected float32 [", H, ", c, ", d, ", ", d, "]",
           c < 0 ? std::string() : detail::concat(" with c = ", c));
}

}  // namespace

MemoryCompressedOptions parse_memory_compressed_options(const nlohmann::json& options,
                                                        const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  MemoryCompressedOptions o;
  o.multi_head.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_multi_head_option(kWho, key, value, o.multi_head)) continue;
    if (key == "compression")
      o.compression = options::get_int(kWho, key, value, 1, 65536);
    else if (key == "block")
      o.block = options::get_int(kWho, key, value, 1);
    else
      options::unknown(kWho, key, memory_compressed_option_specs());
  }
  return o;
}

Tensor memory_compressed_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                   const MechanismArgs& args) {
  int64_t block = 256;
  for (const auto& [key, value] : args.options.items()) {
    if (key == "block")
      block = options::get_int(kWho, key, value, 1);
    else
      options::unknown(kWho, key, {{"block", "int", "256", ""}});
  }
  options::check_tensors(kWho, args, {"k_conv", "v_conv", "k_conv_bias", "v_conv_bias"});
  const AttentionDims dims = validate_attention("memory_compressed", q, k, v, opts);
  EF_CHECK(dims.N == dims.M, ShapeError, kWho, ": self-attention only: q has ", dims.N, " positions and k ",
           dims.M);
  EF_CHECK(!opts.key_mask.defined(), ValueError, kWho, " takes no key_mask (its windows mix positions)");
  for (const char* name : {"k_conv", "v_conv"})
    EF_CHECK(args.tensors.count(name), ValueError, kWho, ": needs the tensor argument ", name, " [", dims.H,
             ", c, ", dims.d, ", ", dims.d, "]");
  const Tensor& kw = args.tensors.at("k_conv");
  const Tensor& vw = args.tensors.at("v_conv");
  check_conv("k_conv", kw, dims.H, dims.d, -1);
  check_conv("v_conv", vw, dims.H, dims.d, kw.size(1));
  Tensor bias[2];
  int i = 0;
  for (const char* name : {"k_conv_bias", "v_conv_bias"}) {
    const auto it = args.tensors.find(name);
    if (it != args.tensors.end()) {
      EF_CHECK(it->second.dtype() == DType::Float32 && it->second.shape() == (Shape{dims.H, dims.d}), ShapeError,
               kWho, ": ", name, " is ", it->second.describe(), "; expected float32 [", dims.H, ", ", dims.d, "]");
      bias[i] = it->second;
    }
    ++i;
  }
  EF_CHECK(opts.dropout == 0.0f, ValueError, kWho, " takes no attention dropout (its fused passes keep no probabilities)");
  return compressed_and_local(q, k, v, kw, bias[0], vw, bias[1], block, opts.causal, dims.scale);
}

MechanismEntry memory_compressed_entry() {
  MechanismEntry e;
  e.name = "memory_compressed";
  e.description =
      "memory-compressed attention: keys and values compressed by a strided conv (kernel = stride = c) plus "
      "exact local blocks, one softmax (Liu et al. 2018, sec. 4.2)";
  e.capabilities = {.causal = true, .bidirectional = true};
  e.reference = "memory_compressed";
  e.options = memory_compressed_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_memory_compressed_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<MemoryCompressedAttention>(c);
  };
  e.functional = memory_compressed_attention;
  return e;
}

MemoryCompressedAttention::MemoryCompressedAttention(const MechanismConfig& config)
    : MemoryCompressedAttention(config, parse_memory_compressed_options(config.options, config.positions)) {}

MemoryCompressedAttention::MemoryCompressedAttention(const MechanismConfig& config, MemoryCompressedOptions options)
    : ProjectedAttention("MemoryCompressedAttention", "memory_compressed", config, options.multi_head),
      options_(options) {
  const int64_t c = options_.compression, d = d_;
  EF_CHECK(c * d * d <= (int64_t(1) << 28), ValueError, label(), ": option compression = ", c,
           " makes kernels of ", c * d * d, " values per head; expected fewer than 2^28");
  const float std = 1.0f / std::sqrt(float(c * d));
  k_conv_ = &register_parameter("k_conv", nn::normal_init({H_, c, d, d}, std));
  k_bias_ = &register_parameter("k_conv_bias", Tensor::zeros({H_, d}));
  v_conv_ = &register_parameter("v_conv", nn::normal_init({H_, c, d, d}, std));
  v_bias_ = &register_parameter("v_conv_bias", Tensor::zeros({H_, d}));
}

std::string MemoryCompressedAttention::describe() const {
  return detail::concat("MemoryCompressedAttention(d_model=", config_.d_model, ", n_heads=", H_,
                        ", compression=", options_.compression, ", block=", options_.block,
                        ", causal=", config_.causal ? "true" : "false", ")");
}

Tensor MemoryCompressedAttention::mix(const Tensor& x, const Tensor& memory, const Tensor&) {
  const Heads h = project(x, memory);
  return output(compressed_and_local(h.q, h.k, h.v, *k_conv_, *k_bias_, *v_conv_, *v_bias_, options_.block,
                                     config_.causal, 1.0f / std::sqrt(float(d_))));
}

}  // namespace eformer::attention
