// The Synthesizer (Tay et al. 2020, arXiv:2005.00743): attention weights synthesized instead of computed
// from query-key products. Per head, logits S [N, M] from one or more components (sec. 3):
//   dense              S_i = W2 relu(W1 X_i + b1) + b2: a two-layer MLP per token -> max_len logits, the
//                      first M used (eq. 1-2); X_i is the token's query projection, W1 [d, d]
//   random             S = R, a learned (or fixed) [max_len, max_len] matrix, independent of the input (eq. 4)
//   factorized_dense   A_i = MLP_a(X_i) in R^a, B_i = MLP_b(X_i) in R^b with a b = max_len, S_i = A_i (x) B_i
//                      (the outer product flattened: S_i[x b + y] = A_i[x] B_i[y]; sec. 3.1.1)
//   factorized_random  S = R1 R2^T, R1, R2 [max_len, rank] (sec. 3.2.1)
//   dot_product        S = Q K^T / sqrt(d), the Transformer's own
// and Y = softmax(sum_c alpha_c S_c) V (sec. 3.3, mixtures), alpha = softmax of learned logits per head
// (so sum alpha = 1; "mix" [heads, components], zero at init: equal weights). Causal by masking S (j <= i);
// a padding mask masks keys. Fixed-length (max_len sizes R and the MLP's output); O(N^2) like exact
// attention: what it saves is the query-key product, not the N x N matrix.
//
// Options: synthesis ("dense"; components joined by '+', e.g. "random+dot_product"), trainable (true:
// random matrices are parameters; false: fixed buffers drawn at init), rank (8), factor (0: a = the
// divisor of max_len nearest its square root below it; b = max_len / a), rotary and rotary_base (rotate q
// and k: the dot product's, and the query the dense MLP reads). Parameters, also the functional form's
// tensor names: dense_w1 [H, d, d], dense_b1 [H, d], dense_w2 [H, d, L], dense_b2 [H, L]; fdense_* likewise
// with w2 [H, d, a + b]; random [H, L, L]; random_u, random_v [H, L, rank]; mix [H, C] (C > 1 only).
// Projections: q_proj where a dense component or the dot product needs it, k_proj with the dot product.
//
// Streaming (native): a cache of V (and K for the dot product); a new token's row of logits over the
// cached positions, the same function of the same tensors as the parallel pass.
#pragma once
#include <string>
#include <vector>

#include "eformer/attention/projected.h"

namespace eformer::attention {

MechanismEntry synthesizer_entry();

enum class Synthesis { Dense, Random, FactorizedDense, FactorizedRandom, DotProduct };

struct SynthesizerOptions {
  std::vector<Synthesis> synthesis = {Synthesis::Dense};
  bool trainable = true;
  int64_t rank = 8;
  int64_t factor = 0;
  MultiHeadOptions multi_head;
};
SynthesizerOptions parse_synthesizer_options(const nlohmann::json& options, const std::string& positions = "none");

// Functional form: q, k, v [B, H, N, d] (self-attention: N = M); args.options "synthesis" (as above) and
// "factor" (a, required by factorized_dense); args.tensors the component weights named above, sized >= N
// where they are per position, and optionally "mix" [H, C]. opts: causal, key_mask, scale (the dot product),
// dropout (on the probabilities).
Tensor synthesizer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                             const MechanismArgs& args = {});

class SynthesizerAttention : public ProjectedAttention {
 public:
  explicit SynthesizerAttention(const MechanismConfig& config);
  std::string describe() const override;
  const SynthesizerOptions& options() const { return options_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  SynthesizerAttention(const MechanismConfig& config, SynthesizerOptions options);
  MechanismArgs weights() const;  // the components' tensors by name (factor in options)
  SynthesizerOptions options_;
};

}  // namespace eformer::attention
