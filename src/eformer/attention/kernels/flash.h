// Exact attention by a fused, tiled, online-softmax kernel (FlashAttention, Dao et al. 2022;
// the backward as in FlashAttention-2): never materializes the N x M scores. It is the block-sparse
// kernel (block_sparse.h) on the dense layout (every block pair, kFlashBlock x kFlashBlock tiles):
// the forward saves only the output O and the per-row log-sum-exp L [B, H, N]; the backward
// recomputes score tiles from q, k and L. Extra memory is O(N d) (the backward's dQ partials, a few
// tiles per thread).
#pragma once
#include <cstdint>

#include "eformer/attention/options.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// q [B, H, N, d], k and v [B, H, M, d] float32 -> [B, H, N, d] = softmax(scale q k^T + mask) v.
// A query row with no attendable key (every key masked) gives 0 and receives zero gradients.
// opts.dropout > 0 is fused (the mask regenerated per tile, never stored) and drops exactly the
// elements full_attention drops from the same generator state.
Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts = {});

}  // namespace eformer::attention

namespace eformer::kernels {

// The dense layout's block: queries x keys of one score tile (docs/BENCHMARKS.md, block size).
inline constexpr int64_t kFlashBlock = 128;

// Fused dropout on the probabilities (AttentionOptions::dropout), 0 < p < 1. The mask of P
// [B, H, N, M] is never stored: element e = ((b H + h) N + i) M + j is kept iff
// (philox(seed, stream, counter + e / 4)[e % 4] >> 8) >= ceil(p 2^24), i.e. rng::fill_uniform's draw
// is >= p, exactly as ops/dropout.h on a contiguous [B, H, N, M] tensor; Z = keep / (1 - p).
struct FlashDropout {
  float p = 0.0f;
  uint64_t seed = 0, stream = 0, counter = 0;
};

// q [B*H, N, d], k, v [B*H, M, d], key_mask [B, M] or null, out [B*H, N, d], lse [B*H, N];
// dropout null = none. With dropout, O = (P o Z) V while the running max, row sum and L are those
// of the undropped P. Parallel over (b, h, query block); each output row is computed by one
// thread in a fixed order.
void flash_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask, float* out,
                             float* lse, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                             bool causal, const FlashDropout* dropout = nullptr);

// Inputs as above plus dout [B*H, N, d]; writes dq [B*H, N, d], dk, dv [B*H, M, d]. With
// D_i = rowsum(dO o O) and, per tile, P = exp(S - L), dS = P o (dO V^T o Z - D) (Z = 1 without
// dropout): dV = (P o Z)^T dO, dK = scale dS^T Q, dQ = scale dS K (FlashAttention-2 with dropout;
// D_i = rowsum(P o Z o dO V^T) = rowsum(dO o O) still). `dropout` must be the forward's. Parallel
// over (b, h, key-block group) as block_sparse_attention_backward: bits do not depend on the
// thread count.
void flash_attention_backward(const float* q, const float* k, const float* v, const bool* key_mask,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk,
                              float* dv, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                              bool causal, const FlashDropout* dropout = nullptr);

}  // namespace eformer::kernels
