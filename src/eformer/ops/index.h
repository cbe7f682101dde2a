// Indexing along a dim with int64 index tensors: gather, scatter_add (torch semantics), and a
// stable argsort. Indices must lie in [0, size of the dim); anything else is an IndexError naming
// the index and the size. Scatters are deterministic: each destination column is accumulated by
// one thread in increasing index-position order, whatever the thread count.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// torch.gather: out has index's shape; for dim 1 of a 3-D x, out[i][j][k] = x[i][index[i][j][k]][k].
// index has x's number of dims and index.size(d) <= x.size(d) for d != dim. The gradient
// scatter-adds g into zeros of x's shape.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// torch.scatter_add: out = x.clone(); for dim 0 of 2-D tensors, out[index[i][j]][j] += src[i][j]
// for every (i, j) of index's shape. index.size(d) <= src.size(d) for all d and <= x.size(d) for
// d != dim. Gradients: dx = g, dsrc = gather(g, dim, index) (zero outside index's shape).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
// Int64 indices that sort x along dim, ascending or descending; stable (ties keep their order,
// NaN sorts as the largest value). Not differentiable.
Tensor argsort(const Tensor& x, int64_t dim = -1, bool descending = false);

namespace kernels {
// x [outer, n, inner], index, out [outer, m, inner]: out[o, j, i] = x[o, index[o, j, i], i].
void gather_forward(const float* x, const int64_t* index, float* out, int64_t outer, int64_t n, int64_t m,
                    int64_t inner);
// g [outer, m, inner] -> dx [outer, n, inner] = 0, then dx[o, index[o, j, i], i] += g[o, j, i].
void gather_backward(const float* g, const int64_t* index, float* dx, int64_t outer, int64_t n, int64_t m,
                     int64_t inner);
// out [outer, n, inner] (holding x) += src [outer, m, inner] at index [outer, m, inner]:
// out[o, index[o, j, i], i] += src[o, j, i], in increasing j for each (o, i).
void scatter_add_forward(const float* src, const int64_t* index, float* out, int64_t outer, int64_t n,
                         int64_t m, int64_t inner);
// g [outer, n, inner] -> dsrc [outer, m, inner] = g[o, index[o, j, i], i] (dx is g itself).
void scatter_add_backward(const float* g, const int64_t* index, float* dsrc, int64_t outer, int64_t n,
                          int64_t m, int64_t inner);
// x, indices [outer, n, inner]: indices[o, :, i] is the stable sorting permutation of x[o, :, i].
void argsort_forward(const float* x, int64_t* indices, int64_t outer, int64_t n, int64_t inner,
                     bool descending);
}  // namespace kernels

}  // namespace eformer
