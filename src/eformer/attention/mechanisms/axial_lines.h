// Axial attention's fused path: both axes in one autograd node. The lines of the image (rows for heads
// [0, row_heads), columns for the others) are gathered straight from q, k, v [B, H, n, d] into the flash
// kernel's [lines, heads, length, d] layout by one parallel copy per tensor, attended by the raw flash
// kernels (an exact softmax over each line), and the outputs (and, in the backward, the gradients)
// scattered straight back: no permute, no padding concatenation, no per-axis output concatenation. On an
// unpadded image (N == M == rows * width) the rows need no copy at all: the row heads of one batch entry
// are already rows * row_heads contiguous lines.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::attention {

// q [B, H, N, d], k, v [B, H, M, d] (contiguous or not) on an image of `rows` x `width` pixels
// (max(N, M) <= rows * width); row_mask [B * rows, width] and col_mask [B * width, rows] (Bool, undefined
// = every key real) as the flash key masks of the two axes; scale resolved. No dropout. Differentiable
// w.r.t. q, k, v.
Tensor axial_lines_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t rows, int64_t width,
                             int64_t row_heads, const Tensor& row_mask, const Tensor& col_mask, float scale,
                             bool causal);

}  // namespace eformer::attention
