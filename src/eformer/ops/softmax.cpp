#include "eformer/ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/shape.h"

namespace eformer {
namespace kernels {
namespace {

constexpr int64_t kTile = 256;  // columns of the trailing dims handled together when dim is not last

// Rows of n contiguous elements, split across threads by whole rows.
template <class F>
void for_rows(int64_t rows, int64_t n, F f) {
  parallel::parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) f(r);
                         });
}

// Tiles of up to kTile columns of [outer, n, inner]: f(o, i0, i1) owns columns [i0, i1) of slab o.
template <class F>
void for_tiles(int64_t outer, int64_t n, int64_t inner, F f) {
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel::parallel_for(outer * tiles, std::max<int64_t>(1, 64 / std::max<int64_t>(n, 1)),
                         [&](int64_t t0, int64_t t1) {
                           for (int64_t t = t0; t < t1; ++t) {
                             const int64_t o = t / tiles, i0 = (t % tiles) * kTile;
                             f(o, i0, std::min(inner, i0 + kTile));
                           }
                         });
}

float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// Column-wise max over n rows of a tile: m[i] = max_j x[j * inner + i], i < w.
void tile_max(const float* x, float* m, int64_t n, int64_t inner, int64_t w) {
  for (int64_t i = 0; i < w; ++i) m[i] = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const float* px = x + j * inner;
    for (int64_t i = 0; i < w; ++i) m[i] = std::max(m[i], px[i]);
  }
}

}  // namespace

void softmax_forward(const float* x, float* y, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    for_rows(outer, n, [&](int64_t r) {
      const float* px = x + r * n;
      float* py = y + r * n;
      const float m = row_max(px, n);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) {
        const float e = fast_exp(px[j] - m);
        py[j] = e;
        s += e;
      }
      const float inv = 1.0f / s;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) py[j] *= inv;
    });
    return;
  }
  for_tiles(outer, n, inner, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0;
    const float* px = x + o * n * inner + i0;
    float* py = y + o * n * inner + i0;
    float m[kTile], s[kTile];
    tile_max(px, m, n, inner, w);
    for (int64_t i = 0; i < w; ++i) s[i] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < w; ++i) {
        const float e = fast_exp(px[j * inner + i] - m[i]);
        py[j * inner + i] = e;
        s[i] += e;
      }
    }
    for (int64_t i = 0; i < w; ++i) s[i] = 1.0f / s[i];
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) py[j * inner + i] *= s[i];
  });
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    for_rows(outer, n, [&](int64_t r) {
      const float *py = y + r * n, *pg = dy + r * n;
      float* pd = dx + r * n;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < n; ++j) dot += pg[j] * py[j];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) pd[j] = py[j] * (pg[j] - dot);
    });
    return;
  }
  for_tiles(outer, n, inner, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0, base = o * n * inner + i0;
    const float *py = y + base, *pg = dy + base;
    float* pd = dx + base;
    float dot[kTile];
    for (int64_t i = 0; i < w; ++i) dot[i] = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) dot[i] += pg[j * inner + i] * py[j * inner + i];
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) pd[j * inner + i] = py[j * inner + i] * (pg[j * inner + i] - dot[i]);
  });
}

void log_softmax_forward(const float* x, float* y, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    for_rows(outer, n, [&](int64_t r) {
      const float* px = x + r * n;
      float* py = y + r * n;
      const float m = row_max(px, n);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) s += fast_exp(px[j] - m);
      const float shift = m + std::log(s);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) py[j] = px[j] - shift;
    });
    return;
  }
  for_tiles(outer, n, inner, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0;
    const float* px = x + o * n * inner + i0;
    float* py = y + o * n * inner + i0;
    float m[kTile], s[kTile];
    tile_max(px, m, n, inner, w);
    for (int64_t i = 0; i < w; ++i) s[i] = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) s[i] += fast_exp(px[j * inner + i] - m[i]);
    for (int64_t i = 0; i < w; ++i) s[i] = m[i] + std::log(s[i]);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) py[j * inner + i] = px[j * inner + i] - s[i];
  });
}

void log_softmax_backward(const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                          int64_t inner) {
  if (inner == 1) {
    for_rows(outer, n, [&](int64_t r) {
      const float *py = y + r * n, *pg = dy + r * n;
      float* pd = dx + r * n;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) s += pg[j];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) pd[j] = pg[j] - fast_exp(py[j]) * s;
    });
    return;
  }
  for_tiles(outer, n, inner, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0, base = o * n * inner + i0;
    const float *py = y + base, *pg = dy + base;
    float* pd = dx + base;
    float s[kTile];
    for (int64_t i = 0; i < w; ++i) s[i] = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i) s[i] += pg[j * inner + i];
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < w; ++i)
        pd[j * inner + i] = pg[j * inner + i] - fast_exp(py[j * inner + i]) * s[i];
  });
}

}  // namespace kernels

namespace {

// [outer, n, inner] around `dim` (a 0-d tensor is one row of one element).
AxisSplit split_at(const Tensor& x, int64_t dim, const char* op) {
  if (x.dim() == 0) {
    normalize_dim(dim, 1, op);
    return {};
  }
  return split_around(x.shape(), normalize_dim(dim, x.dim(), op));
}

using KernelFwd = void (*)(const float*, float*, int64_t, int64_t, int64_t);
using KernelBwd = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t);

Tensor softmax_like(const char* name, const Tensor& x_in, int64_t dim, KernelFwd forward,
                    KernelBwd backward) {
  x_in.check_dtype(DType::Float32, name);
  const AxisSplit s = split_at(x_in, dim, name);
  Tensor x = x_in.contiguous_data();
  Tensor out = Tensor::empty(x.shape());
  if (x.numel() > 0) forward(x.data<float>(), out.data<float>(), s.outer, s.n, s.inner);
  Tensor y = out.detach();
  return autograd::record(name, out, {x_in}, [y, s, backward](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(y.shape());
    if (y.numel() > 0) backward(y.data<float>(), gc.data<float>(), dx.data<float>(), s.outer, s.n, s.inner);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  return softmax_like("softmax", x, dim, kernels::softmax_forward, kernels::softmax_backward);
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_like("log_softmax", x, dim, kernels::log_softmax_forward, kernels::log_softmax_backward);
}

}  // namespace eformer
