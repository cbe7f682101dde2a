// Softmax attention of each query over two key sets at once, the compressed windows and its own block
// (memory-compressed attention with local blocks, mechanisms/memory_compressed.h), without any score matrix:
// the fused exact kernel (kernels/flash.h) runs once over the blocks and once per block over the windows it
// may see, and the two partial results are merged by their log-sum-exp,
//     L = log(e^L1 + e^L2),  O = e^(L1 - L) O1 + e^(L2 - L) O2.
// The backward is the flash backward of each key set given the merged O and L: with P = exp(S - L) and
// D = rowsum(dO o O) taken from the union, each set's dS = P o (dP - D) is exactly its share of the joint
// softmax's gradient, so the two passes add up to it.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::attention {

// q, k, v [B, H, Np, d] with Np = (Np / block) block rows, of which the first N are real (keys at N.. are
// never attended); kc, vc [B, H, W, d] the compressed windows. The queries of block b attend windows
// 0 .. visible(b) - 1 and the keys of block b (causal: j <= i). visible(b) = W bidirectional, and
// min(W, floor(b block / c)) causal: the windows wholly before the block. -> [B, H, Np, d].
Tensor compressed_local_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kc,
                                  const Tensor& vc, int64_t N, int64_t block, int64_t c, bool causal, float scale);

}  // namespace eformer::attention
