// The projections of multi-head attention straight into and out of the head-major layout:
//   to_heads:   x [B, N, D] -> (x W^T + b) split into heads, [B, H, N, w]     (W [H w, D], b [H w])
//   from_heads: a [B, H, N, w] -> merge(a) W^T + b, [B, N, D]                 (W [D, H w], b [D])
// Written per head as GEMMs on strided operands, so neither the [B, N, H w] projection nor the
// transposed copy a kernel would make of it exists (three fewer [N, d_model] tensors per attention
// forward, and as many in the backward; at a million tokens each is a GiB). The weights are an
// nn::Linear's ([out, in]), so modules and checkpoints are unchanged.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::attention {

// bias may be undefined.
Tensor project_to_heads(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads);
Tensor project_from_heads(const Tensor& heads, const Tensor& weight, const Tensor& bias);

}  // namespace eformer::attention
