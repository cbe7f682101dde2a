// Layer normalization over the trailing dims (Ba et al. 2016), with optional elementwise affine
// weight and bias. The forward saves each row's mean and 1/std for the backward (as llm.c's
// layernorm_forward / layernorm_backward). Weight and bias gradients are summed over fixed blocks
// of rows and then across blocks in order, so they do not depend on the thread count.
#pragma once
#include "eformer/core/tensor.h"

namespace eformer {

// Normalizes x over its trailing dims `normalized_shape`; weight and bias (each of that shape) may be
// undefined Tensors. y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {},
                  const Tensor& bias = {}, float eps = 1e-5f);

namespace kernels {
// x, y [N, C]; weight, bias [C] (each may be null: 1 and 0); mean, rstd [N] written for the backward.
void layer_norm_forward(const float* x, const float* weight, const float* bias, float* y, float* mean,
                        float* rstd, int64_t N, int64_t C, float eps);
// dy, x, dx [N, C]; weight [C] (null: 1); mean, rstd [N] from the forward. Writes (not accumulates)
// dx, dweight = sum_N dy xhat and dbias = sum_N dy [C]; any of the three may be null when not needed.
void layer_norm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                         const float* rstd, float* dx, float* dweight, float* dbias, int64_t N, int64_t C);
}  // namespace kernels

}  // namespace eformer
