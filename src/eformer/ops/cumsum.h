// Cumulative sums along a dim: prefix sums (torch.cumsum) and, with reverse, suffix sums
// (torch.flip(torch.cumsum(torch.flip(x, [dim]), dim), [dim])). The gradient of a prefix sum is the
// suffix sum of the upstream gradient, and vice versa.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// out[..., j, ...] = sum_{k <= j} x[..., k, ...] along dim (sum_{k >= j} when reverse).
Tensor cumsum(const Tensor& x, int64_t dim, bool reverse = false);

namespace kernels {
// x, out [outer, n, inner]: out[o, j, i] = sum_{k <= j} x[o, k, i] (k >= j when reverse).
// Running sums are kept in double; each (o, i) column is summed by one thread in order.
void cumsum_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner, bool reverse);
// g, dx [outer, n, inner]: dx = the cumulative sum of g in the other direction.
void cumsum_backward(const float* g, float* dx, int64_t outer, int64_t n, int64_t inner, bool reverse);
}  // namespace kernels

}  // namespace eformer
