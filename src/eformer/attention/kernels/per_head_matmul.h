// Products of head-major activations with per-head matrices, as one batched GEMM over the heads (the
// batch folded into the GEMM's columns or rows), or one shared GEMM when the matrix has a single head.
// Used where a mechanism's learned tensors are per head: Linformer's length projections E, F, the
// Synthesizer's MLP weights, memory-compressed attention's strided convolution. Differentiable in both
// operands (composed of reshape, permute and bmm).
#pragma once
#include "eformer/core/tensor.h"

namespace eformer::attention {

// x [B, H, R, C] times w [H, C, O] (w [1, C, O]: one matrix for every head) -> [B, H, R, O].
Tensor per_head_right(const Tensor& x, const Tensor& w);
// a [H, K, R] (or [1, K, R]) times x [B, H, R, C] -> [B, H, K, C].
Tensor per_head_left(const Tensor& a, const Tensor& x);

}  // namespace eformer::attention
