// Cumulative sums along a dim: prefix sums (torch.cumsum) and, with reverse, suffix sums
// (torch.flip(torch.cumsum(torch.flip(x, [dim]), dim), [dim])). The gradient of a prefix sum is the
// suffix sum of the upstream gradient, and vice versa.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// out[..., j, ...] = sum_{k <= j} x[..., k, ...] along dim (sum_{k >= j} when reverse).
Tensor cumsum(const Tensor& x, int64_t dim, bool reverse = false);

// out[..., j, ...] = log sum_{k <= j} exp(x[..., k, ...]) along dim (torch.logcumsumexp), with a running
// maximum: finite for any finite x (where log(cumsum(exp(x))) overflows past x = 88).
Tensor logcumsumexp(const Tensor& x, int64_t dim);

namespace kernels {
// x, out [outer, n, inner]: out[o, j, i] = sum_{k <= j} x[o, k, i] (k >= j when reverse).
// Running sums are kept in double; each (o, i) column is summed by one thread in order.
void cumsum_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner, bool reverse);
// g, dx [outer, n, inner]: dx = the cumulative sum of g in the other direction.
void cumsum_backward(const float* g, float* dx, int64_t outer, int64_t n, int64_t inner, bool reverse);
// x, out [outer, n, inner]: out[o, j, i] = log sum_{k <= j} exp(x[o, k, i]).
void logcumsumexp_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner);
// dx[k] = exp(x[k] - out[k]) R[k], R[k] = g[k] + exp(out[k] - out[k+1]) R[k+1]: every factor <= 1, since
// out is non-decreasing along the dim.
void logcumsumexp_backward(const float* x, const float* out, const float* g, float* dx, int64_t outer,
                           int64_t n, int64_t inner);
}  // namespace kernels

}  // namespace eformer
