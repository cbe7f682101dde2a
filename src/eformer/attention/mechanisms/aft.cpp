#include "eformer/attention/mechanisms/aft.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/conv1d.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

std::vector<OptionSpec> aft_option_specs(const std::string& name) {
  if (name == "aft_simple") return {};
  std::vector<OptionSpec> specs = {
      {"heads", "int", name == "aft_conv" ? "n_heads" : "1",
       "heads sharing one bias each (0: the model's n_heads; AFT mixes channels one by one)"}};
  if (name == "aft_full") {
    specs.push_back(
        {"factorized", "bool", "true", "w = U V^T (AFT eq. 7) instead of a free w [heads, L, L]"});
    specs.push_back({"hidden", "int", "256", "d', the width of the factors U, V [heads, L, d']"});
  } else if (name == "aft_local") {
    specs.push_back({"window", "int", "32", "s: w is learned for |t - t'| < s and 0 outside (AFT eq. 4)"});
    specs.push_back(
        {"factorized", "bool", "false", "the band from U V^T (AFT eq. 7) instead of a free band"});
    specs.push_back(
        {"hidden", "int", "256", "d', the width of the factors U, V [heads, L, d'] (factorized)"});
  } else {
    specs.push_back({"kernel", "int", "32", "s: the kernel size (causal: the s keys up to t; else centred)"});
    specs.push_back({"reparam", "bool", "true", "u = gamma (raw - mean) / std + beta per head (AFT eq. 8)"});
    specs.push_back(
        {"image_shape", "[int, int]", "none (1-D)",
         "[height, width]: 2-D, a kernel [s, s] per head over the raster-ordered image (bidirectional)"});
  }
  return specs;
}

// The state of a native step: the kernel's sums and cache, and the bias computed once (eval weights).
struct AftStreamState : RecurrentState {
  AftState kernel;
  Tensor w;
  int64_t length() const override { return kernel.length; }
};

const Tensor* find_tensor(const MechanismArgs& args, const char* key) {
  const auto it = args.tensors.find(key);
  return it == args.tensors.end() ? nullptr : &it->second;
}

// AFT-full: the GEMM kernels (kernels/aft_full.cpp) where there is no key mask, else the per-pair kernel
// (which also names the error of a causal call with N != M or of no keys). Causal: references and the
// choice of path from the keys up to each query only; a maximum over all keys would let later keys move
// earlier outputs by rounding.
Tensor aft_full_average(const Tensor& k, const Tensor& v, const Tensor& w, bool causal, int64_t N,
                        const Tensor& key_mask, const char* op) {
  AftLayout L;
  L.kind = AftBias::Dense, L.causal = causal;
  if (key_mask.defined() || k.size(2) == 0 || (causal && N != k.size(2)))
    return aft_average(k, v, w, L, N, key_mask, op);
  return causal ? aft_full_causal(k, v, w, op) : aft_full_bidirectional(k, v, w, N, op);
}

// Rows y + dy of img [B, h, w, C] (zero outside the image).
Tensor shift_rows(const Tensor& img, int64_t dy) {
  const int64_t B = img.size(0), h = img.size(1), w = img.size(2), C = img.size(3);
  if (dy == 0) return img;
  if (std::abs(dy) >= h) return Tensor::zeros(img.shape());
  const Tensor zeros = Tensor::zeros({B, std::abs(dy), w, C});
  return dy > 0 ? cat({slice(img, 1, dy, h), zeros}, 1) : cat({zeros, slice(img, 1, 0, h + dy)}, 1);
}

}  // namespace

Tensor aft_conv2d_average(const Tensor& k, const Tensor& v, const Tensor& u, int64_t height, int64_t width,
                          const char* op) {
  EF_CHECK(k.dim() == 4 && v.shape() == k.shape(), ShapeError, op, ": k is ", k.describe(), " and v ",
           v.describe(), "; expected [batch, heads, height * width, dim], one shape");
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), d = k.size(3);
  EF_CHECK(N == height * width, ShapeError, op, ": the sequence has ", N, " positions but image_shape = [",
           height, ", ", width, "] has ", height * width);
  EF_CHECK(u.defined() && u.dtype() == DType::Float32 && u.dim() == 3 && u.size(0) == H &&
               u.size(1) == u.size(2) && u.size(1) >= 1,
           ShapeError, op, ": w is ", u.defined() ? u.describe() : "undefined", "; expected a 2-D kernel [",
           H, ", s, s]");
  const int64_t s = u.size(1), p = (s - 1) / 2, C = H * 2 * d;
  // Shift c_h = max(0, max u_h) per head (a constant): exp(u - c) <= 1 and F = exp(-c) <= 1.
  Tensor shift = Tensor::empty({H, 1, 1}), F = Tensor::empty({1, H, 1, 1});
  {
    const Tensor uc = u.contiguous_data();
    for (int64_t h = 0; h < H; ++h) {
      float c = 0.f;
      for (int64_t i = 0; i < s * s; ++i) c = std::max(c, uc.data<float>()[h * s * s + i]);
      shift.data<float>()[h] = c, F.data<float>()[h] = std::exp(-c);
    }
  }
  // AFT eq. 6: [F sum_t' X_t' + conv2d(X, exp(u - c) - F)], X = [exp(K - mk) (.) V | exp(K - mk)].
  const Tensor ek = exp(sub(k, max(k.detach(), 2, true).first));
  const Tensor x = cat({mul(ek, v), ek}, 3);                                    // [B, H, N, 2d]
  const Tensor ku = sub(exp(sub(u, shift)), reshape(F, {H, 1, 1}));             // [H, s, s]
  const Tensor img = reshape(permute(x, {0, 2, 1, 3}), {B, height, width, C});  // channels last
  Tensor conv;
  for (int64_t a = 0; a < s; ++a) {  // kernel row a: image rows y + a - p, a 1-D conv along each row
    const Tensor wa =
        reshape(contiguous(expand(reshape(slice(ku, 1, a, a + 1), {H, 1, s}), {H, 2 * d, s})), {C, s});
    const Tensor r = depthwise_conv1d(reshape(shift_rows(img, a - p), {B * height, width, C}), wa);
    conv = conv.defined() ? add(conv, r) : r;
  }
  const Tensor local = permute(reshape(conv, {B, N, H, 2 * d}), {0, 2, 1, 3});
  const Tensor nd = add(local, mul(sum(x, {2}, true), F));
  const auto parts = split(nd, {d, d}, 3);
  return div(parts[0], parts[1]);
}

AftLayout aft_layout(const std::string& name, int64_t s, bool causal) {
  AftLayout L;
  L.causal = causal;
  if (name == "aft_full") {
    L.kind = AftBias::Dense;
  } else if (name == "aft_local") {
    L.kind = AftBias::Band;
    L.S = causal ? s : 2 * s - 1;
    L.p = s - 1;
  } else if (name == "aft_conv") {
    L.kind = AftBias::Toeplitz;
    L.S = s;
    L.p = causal ? s - 1 : (s - 1) / 2;
  }
  return L;
}

Tensor aft_attention(const std::string& name, const Tensor& q, const Tensor& k, const Tensor& v,
                     const AttentionOptions& opts, const MechanismArgs& args) {
  const std::string op = "attention '" + name + "'";
  EF_CHECK(args.options.is_object(), ValueError, op, ": options must be a JSON object");
  int64_t image_h = 0, image_w = 0;
  for (const auto& [key, value] : args.options.items()) {
    if (name != "aft_conv" || key != "image_shape")
      options::unknown(op, key,
                       name == "aft_conv" ? std::vector<OptionSpec>{{"image_shape", "", "", ""}}
                                          : std::vector<OptionSpec>{});
    parse_image_shape(op, value, image_h, image_w);
  }
  const std::vector<std::string> allowed = name == "aft_simple" ? std::vector<std::string>{}
                                           : name == "aft_full" ? std::vector<std::string>{"w", "w_u", "w_v"}
                                                                : std::vector<std::string>{"w"};
  options::check_tensors(op, args, allowed);
  EF_CHECK(opts.scale == 0.0f, ValueError, op, ": scale = ", opts.scale, "; AFT has no q.k product to scale");
  EF_CHECK(opts.dropout == 0.0f, ValueError, op, ": dropout = ", opts.dropout,
           "; AFT has no attention probabilities to drop (expected 0)");
  EF_CHECK(q.defined() && k.defined() && q.dim() == 4 && k.dim() == 4 && q.size(0) == k.size(0) &&
               q.size(1) == k.size(1) && q.size(3) == k.size(3),
           ShapeError, op, ": q is ", q.defined() ? q.describe() : "undefined", " and k ",
           k.defined() ? k.describe() : "undefined",
           "; expected [batch, heads, N, d] and [batch, heads, M, d]");
  const int64_t N = q.size(2), M = k.size(2);
  const Tensor *w = find_tensor(args, "w"), *wu = find_tensor(args, "w_u"), *wv = find_tensor(args, "w_v");
  Tensor bias;
  AftLayout L = aft_layout(name, 1, opts.causal);
  if (name == "aft_full") {
    EF_CHECK(bool(w) != (wu && wv) && bool(wu) == bool(wv), ValueError, op,
             ": give the bias w [heads, N, M] or its factors w_u [heads, N, d'] and w_v [heads, M, d']");
    if (w) {
      bias = *w;
    } else {
      EF_CHECK(wu->dim() == 3 && wv->dim() == 3 && wu->size(2) == wv->size(2) && wu->size(1) >= N &&
                   wv->size(1) >= M,
               ShapeError, op, ": w_u is ", wu->describe(), " and w_v ", wv->describe(),
               "; expected [heads, >= ", N, ", d'] and [heads, >= ", M, ", d']");
      bias = bmm(*wu, *wv, false, true);
    }
  } else if (name != "aft_simple") {
    EF_CHECK(w, ValueError, op, ": needs the tensor argument w (",
             name == "aft_local" ? "the band [heads, N, S]" : "the kernel [heads, s]", ")");
    bias = *w;
    EF_CHECK(bias.dim() >= 2, ShapeError, op, ": w is ", bias.describe(), "; expected ",
             name == "aft_local" ? "[heads, N, S]" : "[heads, s]");
    const int64_t S = bias.size(bias.dim() - 1);
    if (name == "aft_local") {
      EF_CHECK(opts.causal || S % 2 == 1, ShapeError, op, ": the bidirectional band w is ", bias.describe(),
               "; its width S = 2 s - 1 must be odd");
      L = aft_layout(name, opts.causal ? S : (S + 1) / 2, opts.causal);
    } else {
      L = aft_layout(name, S, opts.causal);
    }
  }
  EF_CHECK(v.defined() && v.shape() == k.shape(), ShapeError, op, ": v is ",
           v.defined() ? v.describe() : "undefined", "; expected k's shape ", k.describe(),
           " (sigmoid(q) gates the average of v channel by channel)");
  if (image_h > 0) {
    EF_CHECK(!opts.causal && !opts.key_mask.defined(), ValueError, op,
             ": the 2-D form (image_shape) is bidirectional and takes no key_mask");
    return aft_gate(q, aft_conv2d_average(k, v, bias, image_h, image_w, op.c_str()));
  }
  const auto average = [&](const Tensor& kk, const Tensor& vv, const Tensor& mask) {
    return name == "aft_full" ? aft_full_average(kk, vv, bias, opts.causal, N, mask, op.c_str())
                              : aft_average(kk, vv, bias, L, N, mask, op.c_str());
  };
  const int64_t B = k.size(0), H = k.size(1), d = k.size(3);
  if (!bias.defined() || bias.size(0) != 1 || H == 1) return aft_gate(q, average(k, v, opts.key_mask));
  // One bias head (w [1, ...]) shared by every head, as the module with heads = 1: the heads become
  // batch rows [B H, 1, M, d] of that one bias head, so one GEMM serves them all and the gradient of the
  // shared w is summed over the heads.
  Tensor mask;
  if (opts.key_mask.defined()) {
    EF_CHECK(opts.key_mask.dim() == 2 && opts.key_mask.size(0) == B && opts.key_mask.size(1) == M, ShapeError,
             op, ": key_mask is ", opts.key_mask.describe(), "; expected bool [batch, keys] = [", B, ", ", M,
             "]");
    mask = reshape(contiguous(expand(reshape(opts.key_mask, {B, 1, M}), {B, H, M})), {B * H, M});
  }
  const Tensor A = average(reshape(k, {B * H, 1, M, d}), reshape(v, {B * H, 1, M, d}), mask);
  return aft_gate(q, reshape(A, {B, H, N, d}));
}

void parse_image_shape(const std::string& who, const nlohmann::json& v, int64_t& height, int64_t& width) {
  EF_CHECK(v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer() &&
               v[0].get<int64_t>() >= 1 && v[1].get<int64_t>() >= 1,
           ValueError, who, ": option image_shape = ", v.dump(),
           "; expected [height, width], two integers >= 1");
  height = v[0].get<int64_t>(), width = v[1].get<int64_t>();
}

AftOptions parse_aft_options(const std::string& name, const nlohmann::json& options) {
  const std::string who = "attention '" + name + "'";
  EF_CHECK(options.is_object(), ValueError, who, ": options must be a JSON object, got ", options.dump());
  AftOptions o;
  o.heads = name == "aft_conv" ? 0 : 1;
  o.factorized = name == "aft_full";
  const auto specs = aft_option_specs(name);
  for (const auto& [key, value] : options.items()) {
    const bool known =
        std::any_of(specs.begin(), specs.end(), [&k = key](const OptionSpec& s) { return s.name == k; });
    if (!known) options::unknown(who, key, specs);
    if (key == "heads") o.heads = options::get_int(who, key, value, 0);
    if (key == "factorized") o.factorized = options::get_bool(who, key, value);
    if (key == "hidden") o.hidden = options::get_int(who, key, value, 1);
    if (key == "window") o.window = options::get_int(who, key, value, 1);
    if (key == "kernel") o.kernel = options::get_int(who, key, value, 1);
    if (key == "reparam") o.reparam = options::get_bool(who, key, value);
    if (key == "image_shape") parse_image_shape(who, value, o.image_h, o.image_w);
  }
  EF_CHECK(
      name != "aft_conv" || !o.reparam || o.kernel >= 2, ValueError, who, ": option kernel = ", o.kernel,
      " with reparam = true; the reparameterization divides by the kernel's standard deviation, so kernel "
      "must be >= 2 (or reparam false)");
  return o;
}

MechanismEntry aft_entry(const std::string& name) {
  MechanismEntry e;
  e.name = name;
  e.description =
      name == "aft_full"
          ? "Attention Free Transformer, learned pairwise bias w over max_len (Zhai et al. 2021, eq. 2, 7)"
      : name == "aft_simple"
          ? "Attention Free Transformer without position bias, O(N d) (Zhai et al. 2021, eq. 5)"
      : name == "aft_local"
          ? "Attention Free Transformer, bias learned in a window and 0 outside (Zhai et al. 2021, eq. 4)"
          : "Attention Free Transformer, a per-head kernel as depthwise conv + global sum (Zhai et al. 2021, "
            "eq. 6)";
  e.capabilities = {.causal = true,
                    .bidirectional = true,
                    .padding_mask = true,
                    .recurrent = true,
                    .fixed_length = name == "aft_full" || name == "aft_local"};
  e.reference = "aft";
  e.options = aft_option_specs(name);
  e.check_options = [name](const nlohmann::json& o) { parse_aft_options(name, o); };
  e.make = [name](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<AftAttention>(name, c);
  };
  e.functional = [name](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                        const MechanismArgs& args) { return aft_attention(name, q, k, v, opts, args); };
  return e;
}

AftAttention::AftAttention(std::string name, const MechanismConfig& config)
    : AftAttention(name, config, parse_aft_options(name, config.options)) {}

AftAttention::AftAttention(std::string name, const MechanismConfig& config, AftOptions options)
    : ProjectedAttention("AftAttention", name, config, MultiHeadOptions{},
                         ProjectionSpec{.heads = options.heads > 0 ? options.heads : config.n_heads}),
      options_(options) {
  options_.heads = H_;
  const int64_t L = config.max_len;
  // Sizes from outside, checked before they size a parameter (a window, kernel or d' of 2^62 would
  // overflow the shape arithmetic): 65536 is far beyond any useful value.
  for (const auto& [option, value] : {std::pair<const char*, int64_t>{"window", options_.window},
                                      {"kernel", options_.kernel},
                                      {"hidden", options_.hidden}})
    EF_CHECK(value <= 65536, ValueError, label(), ": option ", option, " = ", value,
             "; expected at most 65536");
  if (this->name() == "aft_full" && options_.factorized) {
    w_u_ = &register_parameter("w_u", nn::normal_init({H_, L, options_.hidden}, 1e-2f));
    w_v_ = &register_parameter("w_v", nn::normal_init({H_, L, options_.hidden}, 1e-2f));
  } else if (this->name() == "aft_full") {
    w_ = &register_parameter("w", nn::normal_init({H_, L, L}, 1e-2f));
  } else if (this->name() == "aft_local" && options_.factorized) {
    w_u_ = &register_parameter("w_u", nn::normal_init({H_, L, options_.hidden}, 1e-2f));
    w_v_ = &register_parameter("w_v", nn::normal_init({H_, L, options_.hidden}, 1e-2f));
  } else if (this->name() == "aft_local") {
    w_ = &register_parameter("w",
                             nn::normal_init({H_, L, aft_layout("aft_local", s(), config.causal).S}, 1e-2f));
  } else if (this->name() == "aft_conv") {
    EF_CHECK(options_.image_h == 0 || !config.causal, ValueError, label(),
             ": image_shape (the 2-D form) is bidirectional; it cannot be causal");
    raw_ = &register_parameter(
        "kernel", nn::normal_init(options_.image_h > 0 ? Shape{H_, options_.kernel, options_.kernel}
                                                       : Shape{H_, options_.kernel},
                                  1.0f));
    if (options_.reparam) {
      gamma_ = &register_parameter("gamma", Tensor::zeros({H_}));
      beta_ = &register_parameter("beta", Tensor::zeros({H_}));
    }
  }
}

std::string AftAttention::describe() const {
  std::string extra;
  if (name() == "aft_full")
    extra = options_.factorized ? detail::concat(", factorized, hidden=", options_.hidden) : ", w";
  if (name() == "aft_local")
    extra =
        detail::concat(", window=", options_.window,
                       options_.factorized ? detail::concat(", factorized, hidden=", options_.hidden) : "");
  if (name() == "aft_conv")
    extra = detail::concat(", kernel=", options_.kernel, ", reparam=", options_.reparam ? "true" : "false",
                           options_.image_h > 0 ? detail::concat(", image_shape=[", options_.image_h, ", ",
                                                                 options_.image_w, "]")
                                                : std::string());
  return detail::concat("AftAttention(name=", name(), ", d_model=", config_.d_model, ", heads=", H_,
                        ", causal=", config_.causal ? "true" : "false", extra, ")");
}

Tensor AftAttention::local_band_from_factors(int64_t N) const {
  return aft_band_from_factors(*w_u_, *w_v_, aft_layout("aft_local", s(), config_.causal), N, label().c_str());
}

Tensor AftAttention::bias(int64_t N) {
  if (w_u_ && name() == "aft_local") return local_band_from_factors(N);
  if (w_u_) return bmm(slice(*w_u_, 1, 0, N), slice(*w_v_, 1, 0, N), false, true);
  if (w_) return *w_;
  if (!raw_) return Tensor();
  if (!gamma_) return *raw_;
  // AFT eq. 8: u = gamma (raw - mean raw) / std raw + beta per head (std unbiased, as torch.std), over
  // the kernel's s (1-D) or s x s (2-D) values.
  const Tensor raw = reshape(*raw_, {H_, raw_->numel() / H_});
  const int64_t s = raw.size(1);
  const Tensor centred = sub(raw, mean(raw, {1}, true));
  const Tensor std = sqrt(mul_scalar(sum(mul(centred, centred), {1}, true), 1.0f / float(s - 1)));
  return reshape(add(mul(reshape(*gamma_, {H_, 1}), div(centred, std)), reshape(*beta_, {H_, 1})),
                 raw_->shape());
}

Tensor AftAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  const int64_t N = x.size(1);
  const AftLayout L = aft_layout(name(), s(), config_.causal);
  Tensor A;
  if (options_.image_h > 0) {
    EF_CHECK(!key_mask.defined(), ValueError, label(), ": the 2-D form (image_shape) takes no key_mask");
    A = aft_conv2d_average(h.k, h.v, bias(N), options_.image_h, options_.image_w, label().c_str());
  } else if (name() == "aft_full") {
    A = aft_full_average(h.k, h.v, bias(N), config_.causal, N, key_mask, label().c_str());
  } else {
    A = aft_average(h.k, h.v, bias(N), L, N, key_mask, label().c_str());
  }
  // The gate's output sigmoid(q) (.) A is remade in the backward from q and A, which the gate and the
  // average keep anyway: one [B, H, N, d] activation fewer per layer (issue 13's memory target).
  return output_remade([](const std::vector<Tensor>& in) { return aft_gate(in[0], in[1]); }, {h.q, A});
}

std::unique_ptr<RecurrentState> AftAttention::start_native(int64_t) const {
  return std::make_unique<AftStreamState>();
}

Tensor AftAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& st = static_cast<AftStreamState&>(state);
  const Heads h = project_step(x_t, st.length());
  if (!st.w.defined() && name() != "aft_simple") {
    autograd::NoGradGuard no_grad;
    st.w = bias(config_.max_len > 0 ? config_.max_len : 1).detach();
  }
  const AftLayout L = aft_layout(name(), s(), true);
  return output(aft_gate(h.q, aft_average_step(h.k, h.v, st.w, L, st.kernel)));
}

}  // namespace eformer::attention
