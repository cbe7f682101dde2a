// Embedding lookup (torch.nn.functional.embedding without padding_idx or max_norm): rows of a
// [V, D] table picked by int64 ids. The gradient scatter-adds the upstream rows into dweight,
// deterministically: each vocabulary row sums its contributions in increasing position order.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// ids int64 [...], weight [V, D] -> [..., D]; an id outside [0, V) is an IndexError naming it.
Tensor embedding(const Tensor& ids, const Tensor& weight);

namespace kernels {
// ids [n], weight [V, D] -> out [n, D]: out[p] = weight[ids[p]]. Ids must already be in range.
void embedding_forward(const int64_t* ids, const float* weight, float* out, int64_t n, int64_t V, int64_t D);
// g [n, D] -> dweight [V, D]: dweight[v] = sum over p with ids[p] == v of g[p], in increasing p.
void embedding_backward(const float* g, const int64_t* ids, float* dweight, int64_t n, int64_t V, int64_t D);
}  // namespace kernels

}  // namespace eformer
