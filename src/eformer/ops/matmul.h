// Matrix products through the GEMM library. op(a) @ op(b), where op transposes the last two
// dims when asked. Transposed *views* (e.g. transpose(b, -1, -2)) are handed to GEMM as
// transposed operands without a copy.
#pragma once
#include "eformer/core/tensor.h"

namespace eformer {

// a [..., M, K] (or [..., K, M] with trans_a), b [..., K, N] (or [..., N, K] with trans_b).
// Batch dims must be equal, or one operand is 2-D and is shared by every batch.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// Batched: a [B, M, K], b [B, K, N] (3-D only, like torch.bmm).
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

}  // namespace eformer
