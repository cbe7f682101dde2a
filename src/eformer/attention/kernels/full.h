// Exact attention, the textbook way: materialize the scores S = scale q k^T [B, H, N, M], softmax
// over the attendable keys, multiply by v. The readable reference every efficient mechanism is
// compared with; memory is O(N M) per head.
#pragma once
#include <cstdint>

#include "eformer/attention/options.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// q [B, H, N, d], k and v [B, H, M, d] float32 -> [B, H, N, d]. A query row with no attendable
// key gives 0 and receives zero gradients (torch's softmax would give NaN). opts.dropout > 0
// applies ops/dropout.h to the probabilities before v (the contract in options.h).
Tensor full_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts = {});

// softmax of scores [B, H, N, M] along M over the keys the options allow (causal, key_mask);
// 0 at masked keys and on rows with no attendable key. Differentiable.
Tensor masked_softmax(const Tensor& scores, const AttentionOptions& opts);

}  // namespace eformer::attention

namespace eformer::kernels {

// s, p [B, H, N, M]; key_mask [B, M] or null. p = exp(s - max) / sum over allowed keys, 0 elsewhere;
// a row with no allowed key is all 0. The backward is softmax_backward (p = 0 gives dS = 0).
void masked_softmax_forward(const float* s, float* p, const bool* key_mask, int64_t B, int64_t H, int64_t N,
                            int64_t M, bool causal);

}  // namespace eformer::kernels
