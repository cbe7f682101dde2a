// Exact attention where one side is short: a few keys (Linformer's k projected rows, ISAB's m inducing
// points as keys) or a few queries (ISAB's inducing points as queries). The N x M probabilities are
// then no bigger than a few copies of q, so they are computed by whole GEMMs (oneDNN), soft-maxed while
// the chunk is in cache, and kept for the backward: no score tile is recomputed, and every product is
// one GEMM per (batch, head, chunk) instead of flash's 128 x 128 register tiles, which at M = 32 keys
// run a quarter empty. Memory: the B H N M probabilities, kept from the forward to the backward.
#pragma once
#include <cstdint>

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/options.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// Above this many rows on the shorter side (min(N, M)), narrow_attention is flash_attention: keeping
// the probabilities would cost more than min(N, M) / d copies of q.
inline constexpr int64_t kNarrowSideMax = 512;

// q [B, H, N, d], k and v [B, H, M, d] float32 -> [B, H, N, d], the same math as flash_attention
// (causal bottom-right aligned, key_mask, scale, dropout dropping the same elements from the same
// generator state; a row with no attendable key is 0 with zero gradients). min(N, M) <= kNarrowSideMax
// runs the kernels below; otherwise flash_attention.
Tensor narrow_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts = {});

}  // namespace eformer::attention

namespace eformer::kernels {

// q [B*H, N, d], k, v [B*H, M, d], key_mask [B, M] or null; writes p [B*H, N, M] (the undropped
// probabilities, 0 at masked keys) and out [B*H, N, d] = (P o Z) v (Z = 1 without dropout). Parallel
// over (b, h, chunk of query rows), one single-threaded GEMM pair per chunk: bits do not depend on
// the thread count.
void narrow_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask, float* p,
                              float* out, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                              bool causal, const FlashDropout* dropout = nullptr);

// From the forward's p and dout [B*H, N, d]: dq [B*H, N, d], dk, dv [B*H, M, d]; a null output is not
// computed. With dP = dO v^T o Z, D_i = rowsum(P o dP) (= rowsum(dO o O)), dS = P o (dP - D):
// dQ = scale dS k, dK = scale dS^T q, dV = (P o Z)^T dO. Parallel over (b, h, group of query rows): a
// group sums its chunks' dK, dV in order (dS lives in a per-thread chunk, while P is in cache), and the
// groups' sums are added in order after; the grouping depends on N and M only, not on the thread count.
void narrow_attention_backward(const float* q, const float* k, const float* v, const float* p,
                               const float* dout, float* dq, float* dk, float* dv, int64_t B, int64_t H,
                               int64_t N, int64_t M, int64_t d, float scale,
                               const FlashDropout* dropout = nullptr);

}  // namespace eformer::kernels
