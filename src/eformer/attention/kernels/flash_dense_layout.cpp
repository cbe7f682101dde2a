// flash is the block-sparse kernel (block_sparse.h) on the dense layout: one online-softmax loop in
// the project. The dense layout stores no pair lists, so flash's extra memory stays O(N d).
#include <memory>

#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/attention/kernels/flash.h"

namespace eformer::kernels {

void flash_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask, float* out,
                             float* lse, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                             bool causal, const FlashDropout* dropout) {
  block_sparse_attention_forward(q, k, v, key_mask, out, lse, B, H, d, scale, causal,
                                 dense_layout(N, M, kFlashBlock), dropout);
}

void flash_attention_backward(const float* q, const float* k, const float* v, const bool* key_mask,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk,
                              float* dv, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                              bool causal, const FlashDropout* dropout) {
  block_sparse_attention_backward(q, k, v, key_mask, out, lse, dout, dq, dk, dv, B, H, d, scale, causal,
                                  dense_layout(N, M, kFlashBlock), dropout);
}

}  // namespace eformer::kernels

namespace eformer::attention {

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  const AttentionDims s = validate_attention("flash_attention", q, k, v, opts);  // errors name flash
  return block_sparse_attention(
      q, k, v, opts, std::make_shared<const kernels::BlockSparseLayout>(kernels::dense_layout(s.N, s.M, kernels::kFlashBlock)));
}

}  // namespace eformer::attention
