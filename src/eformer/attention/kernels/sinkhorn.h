// Fused kernels of Sparse Sinkhorn attention (Tay et al. 2020; mechanisms/sinkhorn.h has the math): the
// soft block permutation P from the block summaries (the SortNet and the Gumbel-Sinkhorn balancing) and
// the sorted blocks sum_j P_rj X_j written beside the local keys. Each is one autograd node computed per
// (batch, head) in one parallel region, with single-threaded GEMMs inside: the op-by-op graph they
// replace ran ~60 small ops (each a parallel region, and the batched matmuls one GEMM call per head),
// whose synchronization cost more than their arithmetic below 16K tokens on a shared machine.
// Items are independent and computed the same way on any thread, so results do not depend on the
// thread count.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::kernels {

struct SinkhornSortSizes {
  int64_t n = 0;              // blocks
  int64_t iterations = 0;     // Sinkhorn iterations
  float inv_temperature = 1;  // 1 / tau
  bool causal = false;        // row i may select only blocks j < i (Causal Sinkhorn Balancing)
};

// The soft permutation P [B, H, n, n] from the zero-padded keys blocks [B, H, n b, d] and the SortNet
// w1 [H, d, hidden], b1 [H, hidden], w2 [H, hidden, n_max], b2 [H, n_max] (the first n outputs):
//   psi_i = the sum of block i's keys (causal: of block i - 1; psi_0 = 0),
//   R = W2 relu(W1 psi + b1) + b2,  X = (R + gumbel) / tau,
//   bidirectional: `iterations` times X <- F_c(F_r(X)) (log-softmax over rows, then columns), P = exp(X);
//   causal: X masked to j < i, `iterations` times X <- F_r(X - logcumsumexp_i(X)) (the column sums
//   over rows k <= i), P = exp(X), 0 where j >= i.
// gumbel [B, H, n, n] may be undefined (no noise). Differentiable in blocks, the SortNet and gumbel.
Tensor sinkhorn_permutation(const Tensor& blocks, int64_t b, const Tensor& w1, const Tensor& b1,
                            const Tensor& w2, const Tensor& b2, const Tensor& gumbel,
                            const SinkhornSortSizes& s);

// The keys (or values) the attention kernels read: [B, H, rows b + N, d], first the `rows` sorted
// blocks (sorted block r = sum_j P_rj X_j of the zero-padded blocks X_j = blocks[:, :, j b : (j + 1) b]),
// then `local` [B, H, N, d]. P [B, H, rows, n], blocks [B, H, n b, d]. strictly_lower: P_rj = 0 for
// j >= r (causal), so those products are skipped (half the work). Differentiable in P, blocks, local.
Tensor sorted_then_local(const Tensor& P, const Tensor& blocks, const Tensor& local, int64_t b,
                         bool strictly_lower);

// sorted_then_local with the blocks as the local keys (N = n b, no padding or mask): the gradient of the
// blocks is P^T dOut plus the local part of dOut, summed by the GEMM (one tensor, no separate add).
Tensor sorted_then_own(const Tensor& P, const Tensor& blocks, int64_t b, bool strictly_lower);

// Attention of query block r to its sorted block sum_j P_rj X_j and its own block in one exact softmax
// (causal: the own block up to the query, and block 0 without a sorted block), without padding or
// SortCut, the mixing and the attention as one node: q, k, v [B, H, N, d] with N = n b, P [B, H, n, n]
// (strictly lower when causal). The sorted blocks are kept apart
// from k and v (no [2 N, d] copies), and the mixing's backward (dP = dK_sorted K^T + dV_sorted V^T, dK +=
// P^T dK_sorted, dV likewise) accumulates into the attention's gradients in place: at N = 64K the
// backward's memory then fits the allocator's cache. Differentiable in q, k, v and P.
Tensor mixed_block_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& P, int64_t b,
                             float scale, bool causal);

// The SortNet's tensors: w1 [H, d, hidden], b1 [H, hidden], w2 [H, hidden, n_max], b2 [H, n_max].
struct SortNetWeights {
  Tensor w1, b1, w2, b2;
};

// sinkhorn_permutation of k (the blocks are the keys: N = n b, no padding or mask) and
// mixed_block_attention with that P as one node (causal: sizes.causal): the SortNet's block sums read
// k, so their gradient is added into dK in place, where two nodes would write a [B, H, N, d] gradient
// for autograd to add. Differentiable in q, k, v, the SortNet and gumbel (undefined: no noise).
Tensor sinkhorn_block_attention(const Tensor& q, const Tensor& k, const Tensor& v, const SortNetWeights& net,
                                const Tensor& gumbel, const SinkhornSortSizes& sizes, int64_t b, float scale);

}  // namespace eformer::kernels
