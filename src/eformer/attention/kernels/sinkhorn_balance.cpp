// The bidirectional balancing in its scaling form (sinkhorn_balance.h): row passes over X0 with the
// vectors in L1, a vector of lanes over the columns of a row at a time.
#include "eformer/attention/kernels/sinkhorn_balance.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/tile_vec.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

using tile::kWidth;
using tile::load;
using tile::splat;
using tile::store;
using tile::Vec;

// y_j = exp(x_j - shift - c_j) for one row (c: a column vector); the lanes of tile::exp equal fast_exp.
void exp_row(const float* x, float shift, const float* c, float* y, int64_t n) {
  const Vec sv = splat(shift);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) store(y + j, tile::exp(load(x + j) - sv - load(c + j)));
  for (; j < n; ++j) y[j] = fast_exp(x[j] - shift - c[j]);
}

// F_r: u_i = log sum_j exp(x0_ij - v_j), by the row maximum. tmp: scratch [n].
void update_rows(const float* x0, const float* v, float* u, float* tmp, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x0 + i * n;
    for (int64_t j = 0; j < n; ++j) tmp[j] = xr[j] - v[j];
    const float m = attention::OnlineSoftmax::max_of(tmp, n);
    u[i] = m + std::log(attention::OnlineSoftmax::exp_in_place(tmp, n, m));
  }
}

// F_c: v_j = log sum_i exp(x0_ij - u_i), by the column maximum (a pass for it, a pass for the sum). m, s:
// scratch [n].
void update_columns(const float* x0, const float* u, float* v, float* m, float* s, int64_t n) {
  std::fill(m, m + n, -std::numeric_limits<float>::infinity());
  std::fill(s, s + n, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x0 + i * n;
    const Vec ui = splat(u[i]);
    int64_t j = 0;
    for (; j + kWidth <= n; j += kWidth) store(m + j, tile::vmax(load(m + j), load(xr + j) - ui));
    for (; j < n; ++j) m[j] = std::max(m[j], xr[j] - u[i]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x0 + i * n;
    const Vec ui = splat(u[i]);
    int64_t j = 0;
    for (; j + kWidth <= n; j += kWidth)
      store(s + j, load(s + j) + tile::exp(load(xr + j) - ui - load(m + j)));
    for (; j < n; ++j) s[j] += fast_exp(xr[j] - u[i] - m[j]);
  }
  for (int64_t j = 0; j < n; ++j) v[j] = m[j] + std::log(s[j]);
}

}  // namespace

void sinkhorn_scaling_forward(const float* x0, float* uv, float* P, float* scratch, int64_t n,
                              int64_t iterations) {
  float *zero = scratch, *m = scratch + n, *s = scratch + 2 * n;
  std::fill(zero, zero + n, 0.f);
  const float* v = zero;
  for (int64_t t = 0; t < iterations; ++t) {
    float *ut = uv + 2 * t * n, *vt = ut + n;
    update_rows(x0, v, ut, m, n);
    update_columns(x0, ut, vt, m, s, n);
    v = vt;
  }
  const float* u = uv + 2 * (iterations - 1) * n;
  for (int64_t i = 0; i < n; ++i) exp_row(x0 + i * n, u[i], v, P + i * n, n);
}

// Per iteration, last first: the column log-softmax's backward g -= exp(c) colsum(g), then the row
// log-softmax's g -= exp(a) rowsum(g), with c = X0 - u_t - v_t and a = X0 - u_t - v_{t-1} recomputed
// row by row (one pass over g and X0 per iteration; the column sums for the next come out of it).
void sinkhorn_scaling_backward(const float* x0, const float* uv, const float* P, float* g, float* scratch,
                               int64_t n, int64_t iterations) {
  float *colsum = scratch, *next = scratch + n, *zero = scratch + 2 * n;
  std::fill(colsum, colsum + n, 0.f);
  std::fill(zero, zero + n, 0.f);
  for (int64_t i = 0; i < n; ++i)  // exp' = exp
    for (int64_t j = 0; j < n; ++j) colsum[j] += g[i * n + j] *= P[i * n + j];
  for (int64_t t = iterations - 1; t >= 0; --t) {
    const float *u = uv + 2 * t * n, *v = u + n, *v_prev = t > 0 ? u - n : zero;
    std::fill(next, next + n, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      const float* xr = x0 + i * n;
      float* gr = g + i * n;
      const Vec ui = splat(u[i]);
      Vec acc{};
      int64_t j = 0;
      for (; j + kWidth <= n; j += kWidth) {
        const Vec gj = load(gr + j) - tile::exp(load(xr + j) - ui - load(v + j)) * load(colsum + j);
        store(gr + j, gj);
        acc += gj;
      }
      float rowsum = tile::reduce_sum(acc);
      for (; j < n; ++j) rowsum += gr[j] -= fast_exp(xr[j] - u[i] - v[j]) * colsum[j];
      const Vec rs = splat(rowsum);
      j = 0;
      for (; j + kWidth <= n; j += kWidth) {
        const Vec gj = load(gr + j) - tile::exp(load(xr + j) - ui - load(v_prev + j)) * rs;
        store(gr + j, gj);
        store(next + j, load(next + j) + gj);
      }
      for (; j < n; ++j) next[j] += gr[j] -= fast_exp(xr[j] - u[i] - v_prev[j]) * rowsum;
    }
    std::swap(colsum, next);
  }
}

}  // namespace eformer::kernels
