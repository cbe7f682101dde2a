#include "eformer/attention/mechanisms/memory_compressed.h"

#include <algorithm>
#include <cmath>

#include "eformer/attention/kernels/per_head_matmul.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/dropout.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/select.h"
#include "eformer/ops/shape.h"
#include "eformer/ops/softmax.h"

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

// The joint softmax over the compressed windows and the query's block (the header's formula).
Tensor compressed_and_local(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_conv,
                            const Tensor& k_bias, const Tensor& v_conv, const Tensor& v_bias, int64_t block,
                            bool causal, float scale, float dropout_p) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), c = k_conv.size(1);
  const int64_t W = N / c, S = std::min(block, N), nb = (N + S - 1) / S, Np = nb * S;
  const Tensor qp = pad_rows(q, Np), kp = pad_rows(k, Np), vp = pad_rows(v, Np);
  // Local scores per block: [B H nb, S, S] -> [B, H, Np, S].
  const Tensor local = reshape(
      bmm(reshape(qp, {B * H * nb, S, d}), reshape(kp, {B * H * nb, S, d}), false, true), {B, H, Np, S});
  Tensor kc, vc, scores = local;
  if (W > 0) {
    kc = compress(k, k_conv, k_bias, W), vc = compress(v, v_conv, v_bias, W);
    scores = cat({matmul(qp, kc, false, true), local}, 3);  // [B, H, Np, W + S]
  }
  scores = mul_scalar(scores, scale);
  Tensor blocked = Tensor::zeros({1, 1, Np, W + S}, DType::Bool);
  bool* out = blocked.data<bool>();
  for (int64_t i = 0; i < Np; ++i) {
    for (int64_t w = 0; w < W; ++w) out[i * (W + S) + w] = causal && (w + 1) * c - 1 > i;
    const int64_t start = i / S * S;
    for (int64_t j = 0; j < S; ++j) out[i * (W + S) + W + j] = start + j >= N || (causal && start + j > i);
  }
  Tensor p = softmax(masked_fill(scores, blocked, -1e30f), 3);
  if (dropout_p > 0.0f) p = dropout(p, dropout_p, true);
  const Tensor pl = W > 0 ? slice(p, 3, W, W + S) : p;
  Tensor y = reshape(bmm(reshape(contiguous(pl), {B * H * nb, S, S}), reshape(vp, {B * H * nb, S, d})),
                     {B, H, Np, d});
  if (W > 0) y = add(y, matmul(slice(p, 3, 0, W), vc));
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
  return compressed_and_local(q, k, v, kw, bias[0], vw, bias[1], block, opts.causal, dims.scale, opts.dropout);
}

MechanismEntry memory_compressed_entry() {
  MechanismEntry e;
  e.name = "memory_compressed";
  e.description =
      "memory-compressed attention: keys and values compressed by a strided conv (kernel = stride = c) plus "
      "exact local blocks, one softmax (Liu et al. 2018, sec. 4.2)";
  e.capabilities = {.causal = true, .bidirectional = true, .dropout = true};
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
                                     config_.causal, 1.0f / std::sqrt(float(d_)), active_dropout()));
}

}  // namespace eformer::attention
