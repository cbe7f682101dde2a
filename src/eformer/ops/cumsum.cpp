#include "eformer/ops/cumsum.h"

#include <algorithm>
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

}  // namespace kernels

Tensor cumsum(const Tensor& x_in, int64_t dim, bool reverse) {
  x_in.check_dtype(DType::Float32, "cumsum");
  // A 0-d tensor behaves as one element along dim 0 (as in torch).
  const int64_t ndim = std::max<int64_t>(x_in.dim(), 1);
  const int64_t d = normalize_dim(dim, ndim, "cumsum");
  Tensor x = x_in.contiguous_data();
  const Shape& s = x.shape();
  int64_t outer = 1, n = s.empty() ? 1 : s[size_t(d)], inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= s[size_t(i)];
  for (size_t i = size_t(d) + 1; i < s.size(); ++i) inner *= s[i];
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
