#include "eformer/ops/index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/shape.h"

namespace eformer {
namespace kernels {

namespace {
constexpr int64_t kTile = 64;  // columns of `inner` owned by one task in the scatters
}

void gather_forward(const float* x, const int64_t* index, float* out, int64_t outer, int64_t n, int64_t m,
                    int64_t inner) {
  parallel::parallel_for(outer * m, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) {
                             const int64_t o = r / m;
                             const int64_t* pi = index + r * inner;
                             float* po = out + r * inner;
                             const float* px = x + o * n * inner;
                             for (int64_t i = 0; i < inner; ++i) po[i] = px[pi[i] * inner + i];
                           }
                         });
}

void scatter_add_forward(const float* src, const int64_t* index, float* out, int64_t outer, int64_t n,
                         int64_t m, int64_t inner) {
  // Task (o, tile) owns out[o, :, tile]: no two tasks touch the same element, and each element
  // receives its contributions in increasing j.
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel::parallel_for(outer * tiles, std::max<int64_t>(1, 4096 / std::max<int64_t>(m * kTile, 1)),
                         [&](int64_t t0, int64_t t1) {
                           for (int64_t t = t0; t < t1; ++t) {
                             const int64_t o = t / tiles, i0 = (t % tiles) * kTile,
                                           i1 = std::min(inner, i0 + kTile);
                             float* po = out + o * n * inner;
                             for (int64_t j = 0; j < m; ++j) {
                               const int64_t* pi = index + (o * m + j) * inner;
                               const float* ps = src + (o * m + j) * inner;
                               for (int64_t i = i0; i < i1; ++i) po[pi[i] * inner + i] += ps[i];
                             }
                           }
                         });
}

void gather_backward(const float* g, const int64_t* index, float* dx, int64_t outer, int64_t n, int64_t m,
                     int64_t inner) {
  std::memset(dx, 0, sizeof(float) * size_t(outer * n * inner));
  scatter_add_forward(g, index, dx, outer, n, m, inner);
}

void scatter_add_backward(const float* g, const int64_t* index, float* dsrc, int64_t outer, int64_t n,
                          int64_t m, int64_t inner) {
  gather_forward(g, index, dsrc, outer, n, m, inner);
}

void argsort_forward(const float* x, int64_t* indices, int64_t outer, int64_t n, int64_t inner,
                     bool descending) {
  // NaN is the largest value (as in torch.sort), which keeps the comparison a strict weak order.
  auto less = [](float a, float b) { return a < b || (std::isnan(b) && !std::isnan(a)); };
  parallel::parallel_for(outer * inner, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)),
                         [&](int64_t c0, int64_t c1) {
                           std::vector<float> values(static_cast<size_t>(n));
                           std::vector<int64_t> order(static_cast<size_t>(n));
                           for (int64_t c = c0; c < c1; ++c) {
                             const int64_t o = c / inner, i = c % inner;
                             const float* px = x + o * n * inner + i;
                             int64_t* pi = indices + o * n * inner + i;
                             for (int64_t j = 0; j < n; ++j) values[size_t(j)] = px[j * inner];
                             std::iota(order.begin(), order.end(), int64_t(0));
                             if (descending) {
                               std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                                 return less(values[size_t(b)], values[size_t(a)]);
                               });
                             } else {
                               std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                                 return less(values[size_t(a)], values[size_t(b)]);
                               });
                             }
                             for (int64_t j = 0; j < n; ++j) pi[j * inner] = order[size_t(j)];
                           }
                         });
}

}  // namespace kernels

namespace {


// The leading block of `t` of the given (no larger) shape, as a view without history.
Tensor leading_view(const Tensor& t, const Shape& shape) {
  return t.as_strided(shape, t.strides(), t.offset());
}

// A tensor of `full` shape, zero except its leading block, which holds `part`.
Tensor pad_to(const Tensor& part, const Shape& full) {
  if (part.shape() == full) return part;
  Tensor out = Tensor::zeros(full);
  copy_into(leading_view(out, part.shape()), part);
  return out;
}

// index is int64 with x's number of dims and fits inside `bound` on every dim except `d`.
void check_index_shape(const Tensor& index, const Tensor& bound, int64_t d, const char* op,
                       const char* bound_name, bool include_dim) {
  EF_CHECK(index.dtype() == DType::Int64, ShapeError, op, ": index has dtype ", dtype_name(index.dtype()),
           "; expected int64");
  EF_CHECK(index.dim() == bound.dim(), ShapeError, op, ": index has ", index.dim(), " dims and ", bound_name,
           " has ", bound.dim(), "; expected the same number");
  for (int64_t i = 0; i < index.dim(); ++i) {
    if (i == d && !include_dim) continue;
    EF_CHECK(index.shape()[size_t(i)] <= bound.shape()[size_t(i)], ShapeError, op, ": index of shape ",
             shape_str(index.shape()), " is larger than ", bound_name, " of shape ", shape_str(bound.shape()),
             " at dim ", i);
  }
}

void check_index_values(const Tensor& index, int64_t dim, int64_t n, const char* op) {
  const int64_t* p = index.data<int64_t>();
  for (int64_t k = 0, count = index.numel(); k < count; ++k) {
    EF_CHECK(p[k] >= 0 && p[k] < n, IndexError, op, ": index ", p[k], " is out of range for dim ", dim,
             " of size ", n, "; expected 0 <= index < ", n);
  }
}

}  // namespace

Tensor gather(const Tensor& x_in, int64_t dim, const Tensor& index_in) {
  x_in.check_dtype(DType::Float32, "gather: input");
  const int64_t d = normalize_dim(dim, x_in.dim(), "gather");
  check_index_shape(index_in, x_in, d, "gather", "input", false);
  Tensor index = index_in.contiguous_data();
  const int64_t n = x_in.shape()[size_t(d)];
  check_index_values(index, d, n, "gather");
  Shape read_shape = index.shape();  // the block of x that the gather can reach
  read_shape[size_t(d)] = n;
  Tensor x = leading_view(x_in, read_shape).contiguous_data();
  const AxisSplit s = split_around(index.shape(), d);
  Tensor out = Tensor::empty(index.shape());
  kernels::gather_forward(x.data<float>(), index.data<int64_t>(), out.data<float>(), s.outer, n, s.n,
                          s.inner);
  return autograd::record("gather", out, {x_in},
                          [index, xs = x_in.shape(), read_shape, s, n](const Tensor& g) {
                            Tensor gc = g.contiguous_data();
                            Tensor dx = Tensor::empty(read_shape);
                            kernels::gather_backward(gc.data<float>(), index.data<int64_t>(),
                                                     dx.data<float>(), s.outer, n, s.n, s.inner);
                            return std::vector<Tensor>{pad_to(dx, xs)};
                          });
}

Tensor scatter_add(const Tensor& x_in, int64_t dim, const Tensor& index_in, const Tensor& src_in) {
  x_in.check_dtype(DType::Float32, "scatter_add: input");
  src_in.check_dtype(DType::Float32, "scatter_add: src");
  const int64_t d = normalize_dim(dim, x_in.dim(), "scatter_add");
  check_index_shape(index_in, x_in, d, "scatter_add", "input", false);
  check_index_shape(index_in, src_in, d, "scatter_add", "src", true);
  Tensor index = index_in.contiguous_data();
  const int64_t n = x_in.shape()[size_t(d)];
  check_index_values(index, d, n, "scatter_add");
  Shape write_shape = index.shape();  // the block of out that the scatter can reach
  write_shape[size_t(d)] = n;
  Tensor src = leading_view(src_in, index.shape()).contiguous_data();
  const AxisSplit s = split_around(index.shape(), d);
  Tensor out = x_in.clone_data();
  if (write_shape == out.shape()) {
    kernels::scatter_add_forward(src.data<float>(), index.data<int64_t>(), out.data<float>(), s.outer, n, s.n,
                                 s.inner);
  } else {
    Tensor block = leading_view(out, write_shape).clone_data();
    kernels::scatter_add_forward(src.data<float>(), index.data<int64_t>(), block.data<float>(), s.outer, n,
                                 s.n, s.inner);
    copy_into(leading_view(out, write_shape), block);
  }
  const bool need_src = requires_grad(src_in);
  return autograd::record("scatter_add", out, {x_in, src_in},
                          [index, write_shape, src_shape = src_in.shape(), s, n, need_src](const Tensor& g) {
                            Tensor dsrc;
                            if (need_src) {
                              Tensor gc = leading_view(g, write_shape).contiguous_data();
                              Tensor part = Tensor::empty(index.shape());
                              kernels::scatter_add_backward(gc.data<float>(), index.data<int64_t>(),
                                                            part.data<float>(), s.outer, n, s.n, s.inner);
                              dsrc = pad_to(part, src_shape);
                            }
                            return std::vector<Tensor>{g, dsrc};
                          });
}

Tensor argsort(const Tensor& x_in, int64_t dim, bool descending) {
  x_in.check_dtype(DType::Float32, "argsort");
  const int64_t ndim = std::max<int64_t>(x_in.dim(), 1);  // a 0-d tensor sorts as one element
  const int64_t d = normalize_dim(dim, ndim, "argsort");
  Tensor x = x_in.contiguous_data();
  const AxisSplit s = x.dim() ? split_around(x.shape(), d) : AxisSplit{1, 1, 1};
  Tensor out = Tensor::empty(x.shape(), DType::Int64);
  if (out.numel() > 0)
    kernels::argsort_forward(x.data<float>(), out.data<int64_t>(), s.outer, s.n, s.inner, descending);
  return out;
}

}  // namespace eformer
