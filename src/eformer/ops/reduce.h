// Reductions over axes: sum, mean, max (with indices). Each output element is accumulated by one
// thread in a fixed order, so results do not depend on the thread count.
#pragma once
#include <utility>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements, a 0-d tensor
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
// Values and int64 indices of the maximum along `dim` (the first index on ties).
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);

namespace kernels {
// x [outer, n, inner] -> out [outer, inner]
void sum_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner);
// x [outer, n, inner] -> values, indices [outer, inner]
void max_forward(const float* x, float* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner);
// dx [outer, n, inner] = 0 except dx[o, idx[o, i], i] = g[o, i]
void max_backward(const float* g, const int64_t* indices, float* dx, int64_t outer, int64_t n, int64_t inner);
}  // namespace kernels

}  // namespace eformer
