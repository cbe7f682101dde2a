// The Attention Free Transformer (Zhai et al. 2021, arXiv:2105.14103) as mechanisms, one class over
// kernels/aft.h. With Q, K, V the projections of x and sigma the sigmoid (eq. 2):
//     Y_t = sigma(Q_t) (.) sum_t' exp(K_t' + w_t,t') (.) V_t' / sum_t' exp(K_t' + w_t,t')   (t' <= t causal)
// Registered names:
//   "aft_full"    w [H, L, L] over max_len L (fixed-length), by default factorized w = U V^T (eq. 7) with
//                 U, V [H, L, d'] (option hidden = d', 256; factorized false: w itself); GEMMs on exp(w) and
//                 exp(K) (.) V by query blocks while the ranges allow (kernels/aft_full.cpp), else per pair
//   "aft_simple"  w = 0 (eq. 5): O(N d)
//   "aft_local"   w learned inside the window |t - t'| < s and 0 outside (eq. 4, *not* -inf: global
//                 connectivity is kept); the band is stored directly, w [H, L, S] (fixed-length; S = s
//                 causal, 2 s - 1 bidirectional; option window = s, 32), or, with factorized true, from
//                 U, V [H, L, d'] as the paper does (band_t,j = U_t . V_t+j-p; option hidden = d')
//   "aft_conv"    w_t,t' = u[t' - t + p], one kernel u of size s per head shared by its channels (eq. 6:
//                 a depthwise convolution with exp(u) - 1 plus the global sum), reparameterized per head
//                 as u = gamma (raw - mean raw) / std raw + beta (eq. 8, gamma = beta = 0 at init, so the
//                 layer starts as AFT-simple). Causal: the s keys t - s + 1 .. t; bidirectional: centred,
//                 p = (s - 1) / 2 (torch's padding "same"). Option kernel = s (32), reparam (true);
//                 image_shape [h, w]: 2-D, a kernel [s, s] per head (bidirectional; aft_conv2d_average).
// Heads: AFT mixes each channel on its own; heads only say which channels share a bias. The paper's
// AFT-full and AFT-local have one (option heads, default 1: the model's n_heads does not apply), its
// AFT-conv one kernel per head (default: the model's n_heads). Projections q, k, v, out are named as in
// every projected mechanism. Initialization: U, V, and the local band from N(0, 1e-2) (standard
// deviation 0.01), the conv kernel's raw values from N(0, 1). No rotary (AFT has no q.k product), no
// cross form, no attention dropout (no probabilities). Padding masks: padded keys are left out of every sum.
//
// Streaming (native): the prefix sums of the keys that left every window plus a cache of the keys still
// inside one (kernels/aft.h AftState): aft_simple O(d) per token, aft_local and aft_conv O(s d),
// aft_full attends its whole cache (O(T d)).
#pragma once
#include <string>

#include "eformer/attention/kernels/aft.h"
#include "eformer/attention/projected.h"

namespace eformer::attention {

// The registry entry of "aft_full", "aft_simple", "aft_local" or "aft_conv".
MechanismEntry aft_entry(const std::string& name);

// Functional form on q, k, v [B, H, N or M, d] (q, k and v of one width): Y = sigmoid(q) (.) A.
// Tensor arguments (args.tensors), the bias of head h shared by its channels:
//   aft_full    "w" [H, >= N, >= M], or its factors "w_u" [H, >= N, d'] and "w_v" [H, >= M, d']
//   aft_simple  none
//   aft_local   "w" the band [H, >= N, S]: w_t,t' = w[h, t, t' - t + p], p = S - 1 causal (S = s) and
//               (S - 1) / 2 bidirectional (S = 2 s - 1, odd)
//   aft_conv    "w" the (reparameterized) kernel [H, s], p = s - 1 causal, (s - 1) / 2 bidirectional
// A w (or w_u and w_v) of one head, [1, ...], is shared by all H heads (the module with heads = 1): one
// GEMM over the heads' columns, its gradient summed over the heads (aft_full, aft_local, aft_conv).
// No JSON options. opts.key_mask is honoured; no scale or dropout (ValueError).
Tensor aft_attention(const std::string& name, const Tensor& q, const Tensor& k, const Tensor& v,
                     const AttentionOptions& opts, const MechanismArgs& args = {});

struct AftOptions {
  int64_t heads = 1;                 // 0: the model's n_heads
  bool factorized = true;            // aft_full (default true), aft_local (default false)
  int64_t hidden = 256;              // aft_full: d'
  int64_t window = 32;               // aft_local: s
  int64_t kernel = 32;               // aft_conv: s
  bool reparam = true;               // aft_conv
  int64_t image_h = 0, image_w = 0;  // aft_conv: 2-D over a raster-ordered [image_h, image_w] image
};
AftOptions parse_aft_options(const std::string& name, const nlohmann::json& options);
// "image_shape": [height, width], two integers >= 1 (ValueError naming `who` otherwise).
void parse_image_shape(const std::string& who, const nlohmann::json& value, int64_t& height, int64_t& width);

// 2-D AFT-conv (eq. 6 as written, bidirectional): k, v [B, H, h w, d] in raster order, u [H, s, s] ->
// A [B, H, h w, d] = (F sum_t' X_t' + conv2d(X, exp(u - c) - F)) / (the same with V = 1), X = exp(K - max K)
// (.) V, c = max(0, max u) per head, F = exp(-c); the conv is centred (torch padding "same"), one kernel
// per head shared by its channels. Composed of differentiable ops (s depthwise 1-D convs, one per kernel
// row). Caveat: where u is very negative the window's terms (exp(u) - 1 ~ -1) cancel part of the global
// sum, so a tiny image whose keys all fall in the window loses float32 precision.
Tensor aft_conv2d_average(const Tensor& k, const Tensor& v, const Tensor& u, int64_t height, int64_t width,
                          const char* op = "aft_conv2d");

// The window layout of `name` for s (window or kernel) in a causal or bidirectional pass.
AftLayout aft_layout(const std::string& name, int64_t s, bool causal);

class AftAttention : public ProjectedAttention {
 public:
  AftAttention(std::string name, const MechanismConfig& config);
  std::string describe() const override;
  const AftOptions& options() const { return options_; }
  // The bias in the layout's tensor form (undefined for aft_simple), differentiable in the parameters.
  Tensor bias(int64_t N);

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  AftAttention(std::string name, const MechanismConfig& config, AftOptions options);
  int64_t s() const { return name() == "aft_conv" ? options_.kernel : options_.window; }
  Tensor local_band_from_factors(int64_t N) const;  // aft_local, factorized: the band [H, N, S]

  AftOptions options_;
  Tensor *w_ = nullptr, *w_u_ = nullptr, *w_v_ = nullptr, *raw_ = nullptr, *gamma_ = nullptr,
         *beta_ = nullptr;
};

}  // namespace eformer::attention
