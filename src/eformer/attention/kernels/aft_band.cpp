// AFT-local and AFT-conv (the Band and Toeplitz layouts of kernels/aft.h) with the window as products of a
// band and rows. The window's sum of query t, sum_t' exp(w_t,t' + K_t') V_t' over t' in [first(t), last(t)),
// factors as
//     exp(a_t) sum_t' E_t,t' X_t',   E_t,t' = exp(w_t,t' + r_t' - a_t),   X_t' = exp(K_t' - r_t') [V_t' | 1]
// with r_t' the maximum of K_t' over the channels of every (batch, head) sharing the bias (one number per
// key) and a_t the maximum of w_t,t' + r_t' over the window, so E <= 1 with a 1 in every row and X <= 1.
// E is one number per (query, key), so the window's sum is S broadcasts times contiguous rows of X [2 d],
// summed directly with the channels in registers: T d exponentials in all instead of T S d, and T S 2 d
// multiply-adds (a banded GEMM of 32-query blocks did twice that, half on the band's zeros, and paid a call
// per block). The keys outside the window (bias 0) are the running prefix and suffix sums of the
// pair-by-pair kernel (kernels/aft.cpp), combined with the window in log space; nothing is subtracted.
//
// Exactness: a channel c of key t' contributes exp(K_t',c - r_t') >= exp(-sigma_t'), sigma_t' = r_t' minus
// the minimum of K_t' over those channels, so the window's largest term of every channel stays far from
// underflow while sigma < kRange over the window. A row whose window holds a key with a wider spread is
// summed pair by pair instead (exact at any range). Both the references and that choice for row t come from
// keys t' in its window only, and its sums read keys of its window only, so in the causal form no later key
// changes an earlier output, not even by rounding.
//
// Backward, with the saved log-normalizer L: P_t,t' = E_t,t' X_t' F_t, F_t = exp(a_t - L_t) per channel, so
// with [G | -H]_t = [dA_t F_t | -dA_t A_t F_t]:  Q = E^T [G | -H] gives dV = x (.) Q_G and the window's
// part of dK, x (.) Q_H (x = exp(K - r)); dw_t,t' = E_t,t' ([G | -H] X^T)_t,t', all pair by pair over the
// window as the forward. The bias gradient is made per (batch, head) and summed over the batch in order
// afterwards, so no result depends on the threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "eformer/attention/kernels/aft_pairs.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/parallel.h"

namespace eformer::kernels {
namespace {

constexpr int64_t kRows = 32;   // query rows per block (the backward's window products)
constexpr int64_t kLanes = 64;  // channels held in registers by the direct window sums

// What the batch shares per bias head hb: the key references r [M], the row references a [N] (-inf for
// an empty window), whether the direct products serve each row, and the band E [N, S]: row t holds
// E_t,j at j - first(t) for the keys of its window (only those are written or read; rows not served are
// not written). E through the counting allocator: its cache spares the page faults of a fresh 4 MiB.
struct BandPlan {
  int64_t N, M, S, J;
  std::vector<float> r, a;
  std::vector<uint8_t> direct;
  ScratchBuffer E;
  const float* row(int64_t hb, int64_t t) const { return E.data + (hb * N + t) * S; }
};

BandPlan make_plan(const std::vector<AftHead>& heads, int64_t B, int64_t H, int64_t N) {
  const AftHead& h0 = heads[0];
  BandPlan plan{N, h0.M, h0.S, kRows + h0.S - 1, {}, {}, {}, ScratchBuffer(H * N * h0.S)};
  const int64_t M = plan.M, d = h0.d, S = plan.S;
  plan.r.assign(size_t(H * M), 0.f), plan.a.assign(size_t(H * N), -kInf),
      plan.direct.assign(size_t(H * N), 0);
  std::vector<float> sigma(static_cast<size_t>(H * M));
  parallel::parallel_for(H * M, 64, [&](int64_t from, int64_t to) {
    for (int64_t item = from; item < to; ++item) {
      const int64_t hb = item / M, j = item % M;
      // Lane-wise minima and maxima, reduced at the end (a simd max reduction compiles to a scalar chain).
      float lo[kLanes], hi[kLanes];
      std::fill(lo, lo + kLanes, kInf), std::fill(hi, hi + kLanes, -kInf);
      for (int64_t b = 0; b < B; ++b) {
        const float* kk = heads[b * H + hb].key(j);
        for (int64_t c0 = 0; c0 < d; c0 += kLanes) {
          const int64_t m = std::min(kLanes, d - c0);
#pragma omp simd
          for (int64_t c = 0; c < m; ++c)
            lo[c] = std::min(lo[c], kk[c0 + c]), hi[c] = std::max(hi[c], kk[c0 + c]);
        }
      }
      const float mx = *std::max_element(hi, hi + kLanes), mn = *std::min_element(lo, lo + kLanes);
      plan.r[item] = mx, sigma[item] = mx - mn;
    }
  });
  parallel::parallel_for(H * N, 16, [&](int64_t from, int64_t to) {
    for (int64_t item = from; item < to; ++item) {
      const int64_t hb = item / N, t = item % N;
      const AftHead& h = heads[hb];
      const float *r = plan.r.data() + hb * M, *sg = sigma.data() + hb * M;
      const int64_t j0 = h.first(t), j1 = h.last(t);
      // The bias of (t, j) is wt[j - j0] (aft.h's layouts); an empty window reads none of it.
      const float* wt = j0 < j1 ? h.w + (t * h.a + j0 + h.b) : h.w;
      float a = -kInf, spread = 0.f;
#pragma omp simd reduction(max : a) reduction(max : spread)
      for (int64_t j = j0; j < j1; ++j) a = std::max(a, wt[j - j0] + r[j]), spread = std::max(spread, sg[j]);
      plan.a[item] = a;
      const bool direct = j0 < j1 && std::isfinite(a) && spread < kRange;
      plan.direct[item] = direct;
      if (!direct) continue;
      float* row = plan.E.data + (hb * N + t) * S;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) row[j - j0] = fast_exp(wt[j - j0] + r[j] - a);
    }
  });
  return plan;
}

// X [M, 2 d] = [x (.) V | x], x = exp(K - r) of one (batch, head).
void band_operand(const AftHead& h, const float* r, float* X) {
  const int64_t d = h.d;
  for (int64_t j = 0; j < h.M; ++j) {
    const float *kk = h.key(j), *vv = h.value(j);
    float* xj = X + j * 2 * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float e = fast_exp(kk[c] - r[j]);
      xj[c] = e * vv[c], xj[d + c] = e;
    }
  }
}

// The window's weighted sums of one query, P [n] = sum_j e[j] X_j over its keys (rows of X [keys, n]):
// each key a broadcast times a contiguous row, the channels by chunks of kLanes held in registers.
void window_sum(const float* e, const float* X, int64_t n, int64_t keys, float* P) {
  int64_t c0 = 0;
  for (; c0 + kLanes <= n; c0 += kLanes) {
    float acc[kLanes] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const float ej = e[j], *x = X + j * n + c0;
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) acc[c] += ej * x[c];
    }
    std::memcpy(P + c0, acc, sizeof(acc));
  }
  if (c0 == n) return;
  std::fill(P + c0, P + n, 0.f);
  for (int64_t j = 0; j < keys; ++j)
#pragma omp simd
    for (int64_t c = c0; c < n; ++c) P[c] += e[j] * X[j * n + c];
}

// Combines query t's window sums P = [num | den] (reference a) with the prefix (and suffix) sums:
// A [d], lse [d] as average_row.
void combine_row(int64_t d, const float* P, float a, const Running& pre, const Running* suf, float* A,
                 float* lse) {
  if (std::isfinite(a) && suf) {  // prefix, window and suffix; the part holding m has den >= exp(-kRange)
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float m = std::max(std::max(pre.mx[c], suf->mx[c]), a);
      const float sp = fast_exp(pre.mx[c] - m), ss = fast_exp(suf->mx[c] - m), sw = fast_exp(a - m);
      const float num = pre.num[c] * sp + suf->num[c] * ss + P[c] * sw;
      const float den = pre.den[c] * sp + suf->den[c] * ss + P[d + c] * sw;
      A[c] = num / den, lse[c] = m + fast_log(den);
    }
    return;
  }
  if (!std::isfinite(a)) {  // an empty window (bidirectional, a query past the keys): the general form
    const bool window = std::isfinite(a);
    for (int64_t c = 0; c < d; ++c) {
      float m = std::max(pre.mx[c], suf ? suf->mx[c] : -kInf);
      m = window ? std::max(m, a) : m;
      m = m == -kInf ? 0.f : m;
      const float sp = fast_exp(pre.mx[c] - m);
      float num = pre.num[c] * sp, den = pre.den[c] * sp;
      if (suf) {
        const float ss = fast_exp(suf->mx[c] - m);
        num += suf->num[c] * ss, den += suf->den[c] * ss;
      }
      if (window) {
        const float sw = fast_exp(a - m);
        num += P[c] * sw, den += P[d + c] * sw;
      }
      const bool any = den > 0.f;
      A[c] = any ? num / den : 0.f, lse[c] = any ? m + std::log(den) : -kInf;
    }
    return;
  }
  // Causal: the prefix and the window, one exponential per channel (the larger reference scales by 1).
  // The window's den is >= exp(-kRange), so the log is of a normal float.
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) {
    const float x = pre.mx[c] - a, e = fast_exp(-std::fabs(x));
    const bool prefix_larger = x > 0.f;
    const float sp = prefix_larger ? 1.f : e, sw = prefix_larger ? e : 1.f;
    const float num = pre.num[c] * sp + P[c] * sw, den = pre.den[c] * sp + P[d + c] * sw;
    A[c] = num / den, lse[c] = (prefix_larger ? pre.mx[c] : a) + fast_log(den);
  }
}

// Forward of one (batch, head) with bias head hb: A, lse [N, d]; scratch as forward_scratch.
int64_t forward_scratch(int64_t M, int64_t N, int64_t d, bool causal) {
  return M * 2 * d + 2 * d + 6 * d + (causal ? 0 : 3 * N * d);
}
void band_forward(const AftHead& h, const BandPlan& plan, int64_t hb, float* A, float* lse, float* buf) {
  const int64_t N = plan.N, M = plan.M, d = h.d;
  float *X = buf, *P = X + M * 2 * d, *run = P + 2 * d, *tmp = run + 3 * d, *sf = tmp + 3 * d;
  band_operand(h, plan.r.data() + hb * M, X);
  if (!h.causal) suffix_sums(h, N, sf, sf + N * d, sf + 2 * N * d);
  Running pre{run, run + d, run + 2 * d};
  pre.reset(d);
  int64_t next = 0;
  const float* a = plan.a.data() + hb * N;
  const uint8_t* direct = plan.direct.data() + hb * N;
  for (int64_t t = 0; t < N; ++t) {
    for (; next < h.first(t); ++next) pre.add(h.key(next), h.value(next), d);
    const Running suf{sf + t * d, sf + (N + t) * d, sf + (2 * N + t) * d};
    if (direct[t]) {
      const int64_t j0 = h.first(t);
      window_sum(plan.row(hb, t), X + j0 * 2 * d, 2 * d, h.last(t) - j0, P);
      combine_row(d, P, a[t], pre, h.causal ? nullptr : &suf, A + t * d, lse + t * d);
    } else {
      average_row(h, t, pre, h.causal ? nullptr : &suf, A + t * d, lse + t * d, tmp, tmp + d, tmp + 2 * d);
    }
  }
}

// One query's window in the backward, summed directly as window_sum: with gh = [G | -H]_t [n] and the
// rows X_j [keys, n] of its keys, Q_j += e_j gh (E^T [G | -H]) and band_j = e_j (gh . X_j) (the bias
// gradient E (.) ([G | -H] X^T)).
void window_backward(const float* e, const float* X, const float* gh, int64_t n, int64_t keys, float* Q,
                     float* band) {
  for (int64_t j = 0; j < keys; ++j) {
    const float ej = e[j], *x = X + j * n;
    float* q = Q + j * n;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < n; ++c) dot += gh[c] * x[c], q[c] += ej * gh[c];
    band[j] = ej * dot;
  }
}

// Backward of one (batch, head): dk, dv [M, d]; its bias gradient band [N, S] (band[t, t' - t + p]).
int64_t backward_scratch(int64_t M, int64_t d, int64_t J) {
  return M * 2 * d + 2 * d + J * 2 * d + J + 3 * d;
}
void band_backward(const AftHead& h, const BandPlan& plan, int64_t hb, const float* A, const float* lse,
                   const float* g, float* dk, float* dv, float* band, float* buf) {
  const int64_t N = plan.N, M = plan.M, d = h.d, J = plan.J;
  const int64_t S = h.S;
  float *X = buf, *gh = X + M * 2 * d, *Q = gh + 2 * d, *row = Q + J * 2 * d, *tmp = row + J;
  band_operand(h, plan.r.data() + hb * M, X);
  std::fill(dk, dk + M * d, 0.f), std::fill(dv, dv + M * d, 0.f);
  const float* a = plan.a.data() + hb * N;
  const uint8_t* direct = plan.direct.data() + hb * N;
  for (int64_t i0 = 0; i0 < N; i0 += kRows) {
    const int64_t i1 = std::min(N, i0 + kRows), jlo = h.first(i0), jhi = h.last(i1 - 1);
    std::fill(Q, Q + std::max<int64_t>(jhi - jlo, 0) * 2 * d, 0.f);
    bool any = false;
    for (int64_t t = i0; t < i1; ++t) {
      const int64_t j0 = h.first(t), j1 = h.last(t);
      if (!direct[t]) {  // a row the direct products do not serve: pair by pair
        window_row_backward(h, t, A + t * d, lse + t * d, g + t * d, dk, dv);
        std::fill(row, row + (j1 - j0), 0.f);
        bias_row_add(h, t, A + t * d, lse + t * d, g + t * d, row);
        for (int64_t j = j0; j < j1; ++j) band[t * S + j - t + h.p] = row[j - j0];
        continue;
      }
      if (lse[t * d] == -kInf) continue;  // a query with no real key has no gradient (its band stays 0)
      any = true;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) {
        const int64_t o = t * d + c;
        const float f = fast_exp(a[t] - lse[o]);
        gh[c] = g[o] * f, gh[d + c] = -g[o] * A[o] * f;
      }
      window_backward(plan.row(hb, t), X + j0 * 2 * d, gh, 2 * d, j1 - j0, Q + (j0 - jlo) * 2 * d,
                      band + t * S + j0 - t + h.p);
    }
    if (!any) continue;
    for (int64_t j = jlo; j < jhi; ++j) {
      const float *x = X + j * 2 * d + d, *q = Q + (j - jlo) * 2 * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) dv[j * d + c] += x[c] * q[c], dk[j * d + c] += x[c] * q[d + c];
    }
  }
  outside_window_backward(h, N, A, lse, g, dk, dv, tmp);
  for (int64_t j = 0; j < M; ++j)
    for (int64_t c = 0; c < d; ++c) dk[j * d + c] += h.value(j)[c] * dv[j * d + c];
}

}  // namespace

Tensor band_average(const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& kc, const Tensor& vc,
                    const Tensor& wc, const std::vector<AftHead>& heads, int64_t B, int64_t H, int64_t N,
                    const attention::AftLayout& layout) {
  const int64_t M = heads[0].M, d = heads[0].d;
  auto plan = std::make_shared<const BandPlan>(make_plan(heads, B, H, N));
  Tensor A = Tensor::empty({B, H, N, d}), lse = Tensor::empty({B, H, N, d});
  float *pA = A.data<float>(), *pl = lse.data<float>();
  for_each_item(B * H, forward_scratch(M, N, d, layout.causal), [&](int64_t bh, float* buf) {
    band_forward(heads[bh], *plan, bh % H, pA + bh * N * d, pl + bh * N * d, buf);
  });
  Tensor Ad = A.detach();
  return autograd::record(
      "aft_band_average", A, {k, v, w}, [kc, vc, wc, Ad, lse, heads, plan, B, H, N, layout](const Tensor& g) {
        const int64_t M = heads[0].M, d = heads[0].d, S = layout.S;
        Tensor gc = g.contiguous_data();
        Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
        ScratchBuffer bands(B * H * N * S);  // each (batch, head)'s bias gradient [N, S]
        std::fill(bands.data, bands.data + B * H * N * S, 0.f);
        const float *pA = Ad.data<float>(), *pl = lse.data<float>(), *pg = gc.data<float>();
        for_each_item(B * H, backward_scratch(M, d, plan->J), [&](int64_t bh, float* buf) {
          const int64_t o = bh * N * d;
          band_backward(heads[bh], *plan, bh % H, pA + o, pl + o, pg + o, dk.data<float>() + bh * M * d,
                        dv.data<float>() + bh * M * d, bands.data + bh * N * S, buf);
        });
        // dw: the batch summed in order per (bias head, row); a kernel (Toeplitz) also over the rows.
        Tensor dw = Tensor::zeros(wc.shape());
        const bool toeplitz = layout.kind == attention::AftBias::Toeplitz;
        float* out = dw.data<float>();
        const int64_t head_stride = toeplitz ? 0 : wc.size(1) * S;
        // Per row t the batch summed in order; a kernel (Toeplitz) then adds the rows in order, per head.
        parallel::parallel_for(toeplitz ? H : H * N, toeplitz ? 1 : 16, [&](int64_t from, int64_t to) {
          std::vector<float> row(static_cast<size_t>(S));
          for (int64_t item = from; item < to; ++item) {
            const int64_t hb = toeplitz ? item : item / N, t0 = toeplitz ? 0 : item % N;
            for (int64_t t = t0; t < (toeplitz ? N : t0 + 1); ++t) {
              std::fill(row.begin(), row.end(), 0.f);
              for (int64_t b = 0; b < B; ++b) {
                const float* src = bands.data + ((b * H + hb) * N + t) * S;
#pragma omp simd
                for (int64_t i = 0; i < S; ++i) row[i] += src[i];
              }
              float* o = out + (toeplitz ? hb * S : hb * head_stride + t * S);
#pragma omp simd
              for (int64_t i = 0; i < S; ++i) o[i] += row[i];
            }
          }
        });
        return std::vector<Tensor>{dk, dv, dw};
      });
}

}  // namespace eformer::kernels
