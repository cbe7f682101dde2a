// Transformer-XL attention (Dai et al. 2019, sec. 3.3): a segment of N queries attends over the
// layer's memory (the last M hidden states of the previous segments, stop-gradient) and itself,
// K = M + N keys, with relative position scores and no absolute positions:
//   A_ij = (q_i + u)^T k_j  +  (q_i + v)^T W_{k,R} R_{i-j}          (eq. (a)+(c) and (b)+(d))
// q_i = W_q x_i, k_j = W_{k,E} c_j, v_j = W_v c_j with c = [memory; x]; R the sinusoidal encodings of
// the distances (Vaswani et al. 2017, sin in the first D/2 columns, cos in the last, as Dai et al.'s
// code); u, v learned per head. The position term is computed once per distance and turned into
// per-pair scores by the relative shift (Dai et al., appendix B), which is also the causal mask.
//
// What is fused: everything. relative_attention runs the block-sparse kernel (kernels/
// block_sparse.h) over every causal tile with the position term as its score bias: per tile of
// queries [i0, i0 + Tq) and keys [j0, j0 + Tk), one GEMM of (q + v) against the Tq + Tk - 1 rows of
// r the tile's distances need, read back along the shift as an index, added to the content tile
// (q + u) k^T inside the online softmax; the backward recomputes tiles and sums dr per distance by
// block diagonal. No N x K buffer: memory O(N d + K d) per (batch, head). ops/relative_shift remains
// an op (the tests' materialized oracle uses it).
#pragma once
#include <cstdint>
#include <memory>

#include "eformer/core/tensor.h"
#include "eformer/nn/linear.h"
#include "eformer/nn/module.h"

namespace eformer::attention {

// R: [K, D] for the distances K - 1, ..., 0 (row p is distance K - 1 - p); D even.
Tensor relative_encodings(int64_t K, int64_t D);

// The functional form on explicit heads: q [B, H, N, d], k, v [B, H, K, d] (N <= K, the queries are
// the last N keys), r [H, K, d] = W_{k,R} R per head, u, w [H, d] the content and position biases.
// Causal, bottom-right aligned. Attention dropout p on the probabilities (default generator): the
// kernel's fused dropout drops exactly the elements ops/dropout drops on the [B, H, N, K]
// probabilities from the same generator state. Returns [B, H, N, d].
Tensor relative_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& r, const Tensor& u,
                          const Tensor& w, float scale, float dropout = 0.0f);

// The module: parameters q, k, v, r, out (Linear D -> D without bias, r is W_{k,R}), content_bias (u)
// and position_bias (v), both [H, d].
class RelativeAttention : public nn::Module {
 public:
  // ValueError unless d_model % n_heads == 0, d_model even, dropout in [0, 1).
  RelativeAttention(int64_t d_model, int64_t n_heads, float dropout, int64_t layer = -1);
  std::string describe() const override;
  // x [B, N, D], memory [B, M, D] (undefined or M = 0: none) -> [B, N, D]. The caller stops the
  // memory's gradient (sec. 3.2, SG(h)): TransformerBlock::forward_with_memory detaches the layer's
  // memory before its LayerNorm, so the LayerNorm's weights still learn from the memory's rows, as
  // in the authors' pre-LN code (layer_norm([mems; w])).
  Tensor forward(const Tensor& x, const Tensor& memory = {}) const;
  // Content-based attention of the queries of x [B, N, D] over memory [B, M, D] with this layer's
  // q, k, v and out weights stop-gradient (no positions, no mask): the attention of the Compressive
  // Transformer's reconstruction loss (Rae et al. 2020, algorithm 2). -> [B, N, D]
  Tensor content_attention(const Tensor& x, const Tensor& memory) const;

 private:
  Tensor heads(const nn::Linear& proj, const Tensor& x) const;  // [B, L, D] -> [B, H, L, d]
  int64_t d_model_, n_heads_, layer_;
  float dropout_;
  std::shared_ptr<nn::Linear> q_, k_, v_, r_, out_;
  Tensor u_, w_;
};

}  // namespace eformer::attention
