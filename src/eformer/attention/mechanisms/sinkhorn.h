// Sparse Sinkhorn attention (Tay et al. 2020, "Sparse Sinkhorn Attention"): the sequence is cut into
// n = ceil(N / b) blocks of b tokens; a sorting network maps each block's summary to n logits R
// (the SortNet: R_i = P(psi(X)_i), psi = the sum of the block's keys, P a two-layer ReLU network);
// Gumbel-Sinkhorn balancing (S^0 = exp((R + g) / tau), then alternate row and column
// normalization in log space) gives a soft block permutation P [n, n]; query block i attends, in one
// softmax, the sorted block sum_j P_ij K_j (its values likewise) and its own local block.
//
//   causal   (our reading of the paper's Causal Sinkhorn Balancing): row i of R is computed from the
//            summary of block i - 1 and may select only blocks j < i; the column normalization of
//            row i sums over rows k <= i only (log cumsum exp down the column, + 1e-30 inside the
//            log); each iteration normalizes columns then rows, so every row i >= 1 is a convex
//            mix of past blocks (block 0 has no sorted block); the local block is causal. No output
//            depends on a later token; the native streaming step (sinkhorn_step.cpp) computes each new
//            block's row of P incrementally and equals the parallel pass (evaluation: no noise).
//   sortcut  (the paper's SortCut, encoder only): every query block attends the first `sortcut` sorted blocks
//            (sum_j P_cj K_j for c < sortcut) plus its own local block.
//
// Padding: masked keys (and the positions past N of a short last block) are zeroed before the
// summaries and the mixing, and never attended in the local block; slot t of a sorted block is
// attended iff some block it may mix (any block; causal: j < i) has a real key at offset t.
// Fused kernels (kernels/sinkhorn.h) compute P, the keys [sorted blocks; K] (values likewise) and, without
// padding or SortCut, each block's softmax over its 2 b keys; otherwise the block-sparse kernel
// (kernels/block_sparse.h) runs over [sorted blocks; K] with an exact layout and key mask. O(N b d) time
// and no N x N tensor; the sorting is O(n^2 (b d + hidden)).
//
// Options (MechanismConfig::options):
//   block 64, iterations 8, temperature 0.75, gumbel true (noise in training mode only),
//   sortcut 0 (off), hidden 0 (= the head dim), rotary, rotary_base
// Parameters per head: sort_w1 [H, d, hidden], sort_b1 [H, hidden], sort_w2 [H, hidden, n_max],
// sort_b2 [H, n_max] with n_max = ceil(max_len / block) (fixed-length: longer is an error).
#pragma once
#include <string>

#include "eformer/attention/projected.h"

namespace eformer::attention {

MechanismEntry sinkhorn_entry();

struct SinkhornOptions {
  int64_t block = 64;
  int64_t iterations = 8;
  double temperature = 0.75;
  bool gumbel = true;
  int64_t sortcut = 0;  // 0: off
  int64_t hidden = 0;   // 0: the head dim
  MultiHeadOptions multi_head;
};
// The module's options (unknown keys, wrong types or values: ValueError naming the option).
SinkhornOptions parse_sinkhorn_options(const nlohmann::json& options, const std::string& positions = "none");

// The sorting network's learned tensors (the SortNet), per head.
struct SortNetwork {
  Tensor w1, b1, w2, b2;  // [H, d, hidden], [H, hidden], [H, hidden, n_max], [H, n_max]
};

// Sinkhorn balancing in log space of logits [B, H, n, n] (already divided by the temperature):
// `iterations` times F_c(F_r(X)) (the Sinkhorn operator); causal: masked to j < i, F_r(F_c_causal(X)).
// Returns P = exp(X) (0 where masked).
Tensor sinkhorn_balance(const Tensor& logits, int64_t iterations, bool causal);

// q, k, v [B, H, N, d] (self-attention: k and v have N rows) -> [B, H, N, d]. gumbel [B, H, n, n]
// is added to the logits before the temperature (undefined: none). permutation, when given,
// receives P [B, H, n, n]. opts.dropout must be 0; opts.causal selects the causal variant.
Tensor sinkhorn_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                          const SortNetwork& net, const SinkhornOptions& o, const Tensor& gumbel = {},
                          Tensor* permutation = nullptr);

// Standard Gumbel noise -log(-log(u + 1e-20) + 1e-20), u uniform from the default generator (one
// reservation of B H n n draws, so eformer.rand after the same generator state reproduces it).
Tensor draw_gumbel(int64_t B, int64_t H, int64_t n);

class SinkhornAttention : public ProjectedAttention {
 public:
  explicit SinkhornAttention(const MechanismConfig& config);
  std::string describe() const override;
  const SinkhornOptions& options() const { return options_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  // Causal streaming (sinkhorn_step.cpp): a KV cache and, per sequence and head, the balancing's running
  // column sums per iteration, so a new block's row of P costs O(iterations n); each token attends its
  // block's sorted block and its own block's earlier keys. Noiseless (the evaluation form).
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  SinkhornAttention(const MechanismConfig& config, SinkhornOptions options);
  SinkhornOptions options_;
  SortNetwork net_;
};

}  // namespace eformer::attention
