#include "eformer/ops/reduce.h"

#include <algorithm>
#include <cstring>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer {
namespace kernels {

void sum_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    // Whole rows: blocks of 1024 summed in double, in a fixed order.
    parallel::parallel_for(outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const float* row = x + o * n;
        double total = 0;
        for (int64_t b = 0; b < n; b += 1024) {
          float part = 0;
          for (int64_t j = b, e = std::min(n, b + 1024); j < e; ++j) part += row[j];
          total += part;
        }
        out[o] = float(total);
      }
    });
    return;
  }
  parallel::parallel_for(outer * ((inner + 255) / 256), 1, [&](int64_t t0, int64_t t1) {
    const int64_t tiles = (inner + 255) / 256;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t / tiles, i0 = (t % tiles) * 256, i1 = std::min(inner, i0 + 256);
      float* po = out + o * inner;
      for (int64_t i = i0; i < i1; ++i) po[i] = 0;
      for (int64_t j = 0; j < n; ++j) {
        const float* px = x + (o * n + j) * inner;
        for (int64_t i = i0; i < i1; ++i) po[i] += px[i];
      }
    }
  });
}

void max_forward(const float* x, float* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner) {
  parallel::parallel_for(outer * inner, 1024, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t o = k / inner, i = k % inner;
      const float* p = x + o * n * inner + i;
      float best = p[0];
      int64_t arg = 0;
      for (int64_t j = 1; j < n; ++j) {
        if (p[j * inner] > best) best = p[j * inner], arg = j;
      }
      values[k] = best;
      indices[k] = arg;
    }
  });
}

void max_backward(const float* g, const int64_t* indices, float* dx, int64_t outer, int64_t n, int64_t inner) {
  std::memset(dx, 0, sizeof(float) * size_t(outer * n * inner));
  for (int64_t k = 0; k < outer * inner; ++k) {
    const int64_t o = k / inner, i = k % inner;
    dx[(o * n + indices[k]) * inner + i] = g[k];
  }
}

}  // namespace kernels

namespace {


std::vector<int64_t> normalized_dims(const std::vector<int64_t>& dims, int64_t ndim, const char* op) {
  std::vector<int64_t> out;
  for (int64_t d : dims) out.push_back(normalize_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  EF_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), ValueError, op, ": a dim is repeated");
  return out;
}

// Sum over sorted `dims` keeping them as size 1 (no autograd).
Tensor sum_keep(const Tensor& x_in, const std::vector<int64_t>& dims) {
  Tensor x = x_in.contiguous_data();
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) {
    AxisSplit s = split_around(x.shape(), *it);
    Shape out_shape = x.shape();
    out_shape[size_t(*it)] = 1;
    Tensor out = Tensor::empty(out_shape);
    kernels::sum_forward(x.data<float>(), out.data<float>(), s.outer, s.n, s.inner);
    x = out;
  }
  return x;
}

Shape drop_dims(const Shape& s, const std::vector<int64_t>& dims) {
  Shape out;
  for (size_t i = 0; i < s.size(); ++i)
    if (std::find(dims.begin(), dims.end(), int64_t(i)) == dims.end()) out.push_back(s[i]);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  x.check_dtype(DType::Float32, "sum");
  std::vector<int64_t> dims = normalized_dims(dims_in, x.dim(), "sum");
  Tensor kept = sum_keep(x, dims);
  Shape keep_shape = kept.shape();
  Tensor out = keepdim ? kept : kept.as_strided(drop_dims(keep_shape, dims), contiguous_strides(drop_dims(keep_shape, dims)), 0);
  Shape xs = x.shape();
  return autograd::record("sum", out, {x}, [xs, keep_shape](const Tensor& g) {
    return std::vector<Tensor>{expand(reshape(g, keep_shape), xs)};
  });
}

Tensor sum(const Tensor& x) {
  std::vector<int64_t> all;
  for (int64_t i = 0; i < x.dim(); ++i) all.push_back(i);
  return sum(x, all, false);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  std::vector<int64_t> dims = normalized_dims(dims_in, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[size_t(d)];
  EF_CHECK(count > 0, ShapeError, "mean: reducing over an empty dim of ", x.describe());
  return mul_scalar(sum(x, dims, keepdim), 1.0f / float(count));
}

Tensor mean(const Tensor& x) {
  std::vector<int64_t> all;
  for (int64_t i = 0; i < x.dim(); ++i) all.push_back(i);
  return mean(x, all, false);
}

std::pair<Tensor, Tensor> max(const Tensor& x_in, int64_t dim, bool keepdim) {
  x_in.check_dtype(DType::Float32, "max");
  const int64_t d = normalize_dim(dim, x_in.dim(), "max");
  EF_CHECK(x_in.shape()[size_t(d)] > 0, ShapeError, "max: dim ", dim, " of ", x_in.describe(), " is empty");
  Tensor x = x_in.contiguous_data();
  AxisSplit s = split_around(x.shape(), d);
  Shape keep_shape = x.shape();
  keep_shape[size_t(d)] = 1;
  Shape out_shape = keepdim ? keep_shape : drop_dims(x.shape(), {d});
  Tensor values = Tensor::empty(out_shape), indices = Tensor::empty(out_shape, DType::Int64);
  kernels::max_forward(x.data<float>(), values.data<float>(), indices.data<int64_t>(), s.outer, s.n, s.inner);
  Shape xs = x.shape();
  Tensor idx = indices.detach();
  values = autograd::record("max", values, {x_in}, [xs, s, idx](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(xs);
    kernels::max_backward(gc.data<float>(), idx.data<int64_t>(), dx.data<float>(), s.outer, s.n, s.inner);
    return std::vector<Tensor>{dx};
  });
  return {values, indices};
}

}  // namespace eformer
