#include "eformer/ops/cumsum.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {

void cumsum_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner, bool reverse) {
  // Position of the k-th step along the dim, walking forward or backward.
  auto at = [n, reverse](int64_t k) { return reverse ? n - 1 - k : k; };
  if (inner == 1) {
    parallel::parallel_for(outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)),
                           [&](int64_t o0, int64_t o1) {
                             for (int64_t o = o0; o < o1; ++o) {
                               const float* px = x + o * n;
                               float* po = out + o * n;
                               double run = 0;
                               for (int64_t k = 0; k < n; ++k) {
                                 run += px[at(k)];
                                 po[at(k)] = float(run);
                               }
                             }
                           });
    return;
  }
  // Tiles of 256 columns: each tile walks the dim in order with one double accumulator per column.
  constexpr int64_t kTile = 256;
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel::parallel_for(
      outer * tiles, std::max<int64_t>(1, 64 / std::max<int64_t>(n, 1)), [&](int64_t t0, int64_t t1) {
        double run[kTile];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = t / tiles, i0 = (t % tiles) * kTile, w = std::min(inner, i0 + kTile) - i0;
          std::fill_n(run, w, 0.0);
          for (int64_t k = 0; k < n; ++k) {
            const int64_t j = at(k);
            const float* px = x + (o * n + j) * inner + i0;
            float* po = out + (o * n + j) * inner + i0;
            for (int64_t i = 0; i < w; ++i) {
              run[i] += px[i];
              po[i] = float(run[i]);
            }
          }
        }
      });
}

void cumsum_backward(const float* g, float* dx, int64_t outer, int64_t n, int64_t inner, bool reverse) {
  // d/dx[k] of sum_j g[j] * out[j] = sum over the outputs that include x[k]: a sum the other way.
  cumsum_forward(g, dx, outer, n, inner, !reverse);
}

// Columns (o, i) of [outer, n, inner], each walked by one thread in order.
template <class F>
void for_columns(int64_t outer, int64_t n, int64_t inner, F&& column) {
  parallel::parallel_for(outer * inner, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)),
                         [&](int64_t c0, int64_t c1) {
                           for (int64_t c = c0; c < c1; ++c) column((c / inner) * n * inner + c % inner);
                         });
}

void logcumsumexp_forward(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  for_columns(outer, n, inner, [&](int64_t base) {
    double m = kNegInf, s = 0;  // the sum is s exp(m)
    for (int64_t k = 0; k < n; ++k) {
      const double v = x[base + k * inner];
      if (v > m) s = s * std::exp(m - v) + 1, m = v;
      else if (v > kNegInf) s += std::exp(v - m);
      out[base + k * inner] = float(m + std::log(s));
    }
  });
}

void logcumsumexp_backward(const float* x, const float* out, const float* g, float* dx, int64_t outer,
                           int64_t n, int64_t inner) {
  for_columns(outer, n, inner, [&](int64_t base) {
    double r = 0;
    for (int64_t k = n - 1; k >= 0; --k) {
      const int64_t e = base + k * inner;
      if (k + 1 < n) {
        const double step = double(out[e]) - double(out[e + inner]);  // <= 0; nan when both are -inf
        r *= step == step ? std::exp(step) : 0.0;
      }
      r += g[e];
      dx[e] = std::isinf(x[e]) && x[e] < 0 ? 0.f : float(std::exp(double(x[e]) - double(out[e])) * r);
    }
  });
}

}  // namespace kernels

namespace {
// [outer, n, inner] around dim of a contiguous shape (a 0-d tensor: one element along dim 0, as torch).
struct Columns {
  int64_t outer = 1, n = 1, inner = 1;
};
Columns columns_of(const Shape& s, int64_t dim, const char* op) {
  const int64_t d = normalize_dim(dim, std::max<int64_t>(int64_t(s.size()), 1), op);
  Columns c;
  c.n = s.empty() ? 1 : s[size_t(d)];
  for (int64_t i = 0; i < d; ++i) c.outer *= s[size_t(i)];
  for (size_t i = size_t(d) + 1; i < s.size(); ++i) c.inner *= s[i];
  return c;
}
}  // namespace

Tensor logcumsumexp(const Tensor& x_in, int64_t dim) {
  x_in.check_dtype(DType::Float32, "logcumsumexp");
  Tensor x = x_in.contiguous_data();
  const Shape& s = x.shape();
  const Columns c = columns_of(s, dim, "logcumsumexp");
  Tensor out = Tensor::empty(s);
  if (out.numel() > 0) kernels::logcumsumexp_forward(x.data<float>(), out.data<float>(), c.outer, c.n, c.inner);
  Tensor saved = out.detach();
  return autograd::record("logcumsumexp", out, {x_in}, [x, saved, s, c](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(s);
    if (dx.numel() > 0)
      kernels::logcumsumexp_backward(x.data<float>(), saved.data<float>(), gc.data<float>(), dx.data<float>(),
                                     c.outer, c.n, c.inner);
    return std::vector<Tensor>{dx};
  });
}

Tensor cumsum(const Tensor& x_in, int64_t dim, bool reverse) {
  x_in.check_dtype(DType::Float32, "cumsum");
  Tensor x = x_in.contiguous_data();
  const Shape& s = x.shape();
  const Columns c = columns_of(s, dim, "cumsum");
  const int64_t outer = c.outer, n = c.n, inner = c.inner;
  Tensor out = Tensor::empty(s);
  if (out.numel() > 0) kernels::cumsum_forward(x.data<float>(), out.data<float>(), outer, n, inner, reverse);
  return autograd::record("cumsum", out, {x_in}, [s, outer, n, inner, reverse](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(s);
    if (dx.numel() > 0)
      kernels::cumsum_backward(gc.data<float>(), dx.data<float>(), outer, n, inner, reverse);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace eformer
