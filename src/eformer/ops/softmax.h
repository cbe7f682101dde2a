// softmax and log_softmax along any dim, numerically stable (the row max is subtracted before
// exp). The last dim has a fast path over contiguous rows; other dims work on tiles across the
// trailing dims. Each output element is computed by one thread in a fixed order.
#pragma once
#include "eformer/core/tensor.h"

namespace eformer {

Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

namespace kernels {
// x, y [outer, n, inner], normalized along n: y = exp(x - max) / sum exp(x - max)
void softmax_forward(const float* x, float* y, int64_t outer, int64_t n, int64_t inner);
// y, dy, dx [outer, n, inner]: dx = y (dy - sum_n(dy y))
void softmax_backward(const float* y, const float* dy, float* dx, int64_t outer, int64_t n, int64_t inner);
// x, y [outer, n, inner]: y = x - max - log sum exp(x - max)
void log_softmax_forward(const float* x, float* y, int64_t outer, int64_t n, int64_t inner);
// y, dy, dx [outer, n, inner]: dx = dy - exp(y) sum_n(dy)
void log_softmax_backward(const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                          int64_t inner);
}  // namespace kernels

}  // namespace eformer
