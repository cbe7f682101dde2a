// The usage of each key of a Transformer-XL attention layer (attention/relative.h): how much
// attention the segment's queries gave it, for the Compressive Transformer's "most-used" compression
// (Rae et al. 2020, sec. 3.1: "the memories are sorted by their average attention (usage)").
//   usage[b, j] = 1 / (H N) sum_h sum_i P[b, h, i, j]
// with P the layer's attention probabilities (the softmax of the relative scores A_ij of relative.h,
// scaled, causal, without dropout), averaged over the H heads and all N queries of the segment (a
// key query i may not see counts 0 for it). Recomputed from the layer's weights, without gradient.
#pragma once
#include "eformer/attention/relative.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// x [B, N, D] and memory [B, M, D] (undefined or M = 0: none) are the layer's attention inputs (after
// the block's LayerNorm), as for RelativeAttention::forward. -> usage [B, M + N] (float, no gradient),
// the keys in the order [memory; x]; each row sums to 1.
Tensor relative_usage(const RelativeAttention& attn, const Tensor& x, const Tensor& memory);

}  // namespace eformer::attention
