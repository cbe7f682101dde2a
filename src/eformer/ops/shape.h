// Shape ops: views where cheap (reshape of contiguous data, transpose, permute, slice, expand,
// squeeze/unsqueeze), copies otherwise (contiguous, cat). All differentiable.
#pragma once
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer {

// One dim may be -1 (inferred). A view when x is contiguous, a copy otherwise.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor contiguous(const Tensor& x);
// Broadcasts size-1 dims (and new leading dims) to `shape` without copying; -1 keeps a size.
Tensor expand(const Tensor& x, const Shape& shape);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
// Elements start, start+step, ... < end along dim (negative start/end count from the end).
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
// Pieces of the given sizes along dim (views); sizes must sum to x.size(dim).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// Pieces of `size` along dim, the last one possibly smaller (torch.split with an int).
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim);

// A shape viewed as [outer, n, inner] around `dim` (already normalized): the layout every
// kernel that works along one axis takes.
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
};
AxisSplit split_around(const Shape& shape, int64_t dim);

// Copies src into the (possibly strided) view dst of the same shape; no autograd.
void copy_into(const Tensor& dst, const Tensor& src);

}  // namespace eformer
