// Linformer (Wang et al. 2020, arXiv:2006.04768): keys and values projected along the length by learned
// E, F in R^{k x max_len} (sec. 4, eq. 7):
//     head_i = softmax(Q W_i^Q (E_i K W_i^K)^T / sqrt(d)) F_i V W_i^V
// so the N queries attend k projected keys: O(N k) time and memory, linear in N. A sequence of N <
// max_len tokens uses the first N columns of E and F (fixed-length: N > max_len is the capability error).
// As a GEMM: K' = E K ([k, N] x [N, d] per head), V' = F V, then the fused exact kernel (kernels/flash.h)
// on q against the k rows of K', V'; the backward runs through both (no N x N anywhere).
//
// Options: k (256, the paper's default), sharing (sec. 4, "parameter sharing"):
//   "none"      E_i, F_i per head: E, F [heads, k, max_len]
//   "headwise"  one E and one F for every head of the layer: [1, k, max_len]   (the default)
//   "kv"        one E = F for keys and values and every head: the parameter "E" [1, k, max_len]
//   "layerwise" one E = F for keys, values, every head and every layer of the model: the model's first
//               linformer layer owns "E" and later layers with the same k use it (MechanismConfig::
//               shared_from); a standalone mechanism is its own first layer (then as "kv")
// and the multi-head options (rotary on q and k before the projection). Init: E, F ~ N(0, 1/k).
// Bidirectional only (the projection mixes every position into each of the k rows: there is no causal
// form; a causal request is the capability error). A padding mask zeroes the padded keys and values
// before the projection, so padded tokens change nothing (the paper has no mask; this is the usual
// extension). Attention dropout applies to the N x k probabilities.
#pragma once
#include <string>

#include "eformer/attention/projected.h"

namespace eformer::attention {

MechanismEntry linformer_entry();

struct LinformerOptions {
  int64_t k = 256;
  std::string sharing = "headwise";
  MultiHeadOptions multi_head;
};
LinformerOptions parse_linformer_options(const nlohmann::json& options, const std::string& positions = "none");

// Functional form: q [B, H, N, d], k, v [B, H, M, d]; args.tensors "E" [H or 1, k', >= M] and optionally
// "F" (same first two sizes; absent: F = E). opts.key_mask zeroes padded keys and values before the
// projection; scale and dropout as flash; causal is a ValueError (no causal form).
Tensor linformer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                           const MechanismArgs& args = {});

class LinformerAttention : public ProjectedAttention {
 public:
  explicit LinformerAttention(const MechanismConfig& config);
  std::string describe() const override;
  const LinformerOptions& options() const { return options_; }
  // The projections in use (F is E under kv and layerwise sharing); E may be the first layer's.
  const Tensor& E() const { return *e_; }
  const Tensor& F() const { return *f_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;

 private:
  LinformerAttention(const MechanismConfig& config, LinformerOptions options);
  LinformerOptions options_;
  const Tensor *e_ = nullptr, *f_ = nullptr;
};

}  // namespace eformer::attention
