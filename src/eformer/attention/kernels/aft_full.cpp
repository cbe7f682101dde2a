// Causal AFT-full with GEMMs (kernels/aft.h, aft_full_causal; the bidirectional form is in
// aft_full_bidirectional.cpp), one head at a time in column layout (K, V [N, B d]: the batch's columns side
// by side, so one GEMM serves the whole batch).
//
// Causal: exp(w_t,t' + K_t',c) = E_t,t' exp(K_t',c - r_t') exp(a_t) with r_t' the maximum of key t' over
// its columns (one number per key) and a_t = max_t'<=t (w_t,t' + r_t'), so E <= 1 with a 1 in every row, and
// the queries in blocks of kBlock rows: block [i0, i1) is one GEMM
//     [num | den] = E [x (.) V | x],   x = exp(K - r),   E_t,t' = exp(w_t,t' + r_t' - a_t) for t' <= t, else
//     0
// ([C, i1] x [i1, 2 B d]). x is made once (N B d exponentials) and E by blocks (N^2 / 2 in all, no [N, N]
// tensor). Channel c's largest term is >= exp(-sigma_t'), sigma_t' = r_t' minus the smallest column of key
// t', so the GEMM serves query t while every key t' <= t has sigma < kRange; later queries are summed pair
// by pair with the exact maximum (exact at any range). References and that choice come from keys <= t, and E
// is exactly 0 above the diagonal (the GEMM adds exact zeros), so no later key moves an output, not even by
// rounding. The backward is the same with the saved log-normalizer L: [G | -H] = [dA | -dA (.) A] exp(a - L),
// Q = sum over blocks E^T [G | -H] gives dV = x (.) Q_G and dK = V (.) dV + x (.) Q_H, dw = E (.) ([G | -H]
// x^T).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/aft.h"
#include "eformer/attention/kernels/aft_pairs.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

constexpr int64_t kBlock = 128;

// One head in column layout: K, V [N, BD] (row t', column b d + c); w rows [N, ldw].
struct FullHead {
  const float *K, *V, *w;
  int64_t N, BD, ldw;
};

// Keys [j0, j1) of row t pair by pair, folded into (num, den, ref) per column with the exact maximum.
void exact_pairs(const FullHead& h, int64_t t, int64_t j0, int64_t j1, float* num, float* den, float* ref) {
  const int64_t BD = h.BD;
  std::vector<float> m(ref, ref + BD);
  for (int64_t c = 0; c < BD; ++c) m[c] = den[c] > 0.f ? m[c] : -kInf;
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t c = 0; c < BD; ++c) m[c] = std::max(m[c], h.K[j * BD + c] + h.w[t * h.ldw + j]);
  for (int64_t c = 0; c < BD; ++c) {
    const float s = den[c] > 0.f ? fast_exp(ref[c] - m[c]) : 0.f;
    num[c] *= s, den[c] *= s, ref[c] = m[c];
  }
  for (int64_t j = j0; j < j1; ++j) {
    const float wb = h.w[t * h.ldw + j];
    for (int64_t c = 0; c < BD; ++c) {
      const float e = fast_exp(h.K[j * BD + c] + wb - m[c]);
      num[c] += e * h.V[j * BD + c], den[c] += e;
    }
  }
}

// Causal references (from keys <= t only): r [N] per key, a [N] per query, and whether the GEMM serves it.
struct CausalPlan {
  std::vector<float> r, a;
  std::vector<uint8_t> gemm;
};
CausalPlan causal_plan(const FullHead& h) {
  const int64_t N = h.N, BD = h.BD;
  CausalPlan p;
  p.r.resize(size_t(N)), p.a.resize(size_t(N)), p.gemm.resize(size_t(N));
  std::vector<float> sigma(static_cast<size_t>(N));
  parallel::parallel_for(N, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j) {
      const float* kj = h.K + j * BD;
      const auto [lo, hi] = std::minmax_element(kj, kj + BD);
      p.r[j] = *hi, sigma[j] = *hi - *lo;
    }
  });
  float spread = 0.f;
  for (int64_t t = 0; t < N; ++t) spread = std::max(spread, sigma[t]), p.gemm[t] = spread < kRange;
  parallel::parallel_for(N, 16, [&](int64_t from, int64_t to) {
    for (int64_t t = from; t < to; ++t) {
      float m = -kInf;
      for (int64_t j = 0; j <= t; ++j) m = std::max(m, h.w[t * h.ldw + j] + p.r[j]);
      p.a[t] = m;
    }
  });
  return p;
}

// X [N, 2 BD] = [x (.) V | x], x = exp(K - r) per key.
void causal_operand(const FullHead& h, const float* r, float* X) {
  const int64_t BD = h.BD;
  parallel::parallel_for(h.N, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
#pragma omp simd
      for (int64_t c = 0; c < BD; ++c) {
        const float e = fast_exp(h.K[j * BD + c] - r[j]);
        X[j * 2 * BD + c] = e * h.V[j * BD + c], X[j * 2 * BD + BD + c] = e;
      }
  });
}

// E [C, i1] of rows [i0, i1): exp(w_t,t' + r_t' - a_t) for t' <= t in rows the GEMM serves, else 0.
void causal_bias_block(const FullHead& h, const CausalPlan& p, int64_t i0, int64_t i1, float* E) {
  parallel::parallel_for(i1 - i0, 4, [&](int64_t from, int64_t to) {
    for (int64_t t = i0 + from; t < i0 + to; ++t) {
      float* row = E + (t - i0) * i1;
      std::fill(row, row + i1, 0.f);
      if (!p.gemm[t]) continue;
      const float* wr = h.w + t * h.ldw;
      for (int64_t j = 0; j <= t; ++j) row[j] = fast_exp(wr[j] + p.r[j] - p.a[t]);
    }
  });
}

// Forward: A, L [N, BD] (the average and its log-normalizer).
void full_causal_forward(const FullHead& h, float* A, float* L) {
  const int64_t N = h.N, BD = h.BD;
  const CausalPlan p = causal_plan(h);
  ScratchBuffer X(N * 2 * BD), E(kBlock * N), P(kBlock * 2 * BD);
  causal_operand(h, p.r.data(), X.data);
  for (int64_t i0 = 0; i0 < N; i0 += kBlock) {
    const int64_t i1 = std::min(N, i0 + kBlock), C = i1 - i0;
    const bool any = std::any_of(p.gemm.begin() + i0, p.gemm.begin() + i1, [](uint8_t g) { return g != 0; });
    if (any) {
      causal_bias_block(h, p, i0, i1, E.data);
      column_sgemm(false, false, C, 2 * BD, i1, E.data, i1, X.data, 2 * BD, 0.f, P.data, 2 * BD);
    }
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      std::vector<float> num(static_cast<size_t>(BD)), den(static_cast<size_t>(BD)),
          ref(static_cast<size_t>(BD));
      for (int64_t t = i0 + from; t < i0 + to; ++t) {
        if (p.gemm[t]) {
          const float *pn = P.data + (t - i0) * 2 * BD, *pd = pn + BD;
          for (int64_t c = 0; c < BD; ++c)
            A[t * BD + c] = pn[c] / pd[c], L[t * BD + c] = p.a[t] + std::log(pd[c]);
          continue;
        }
        std::fill(num.begin(), num.end(), 0.f), std::fill(den.begin(), den.end(), 0.f);
        std::fill(ref.begin(), ref.end(), -kInf);
        exact_pairs(h, t, 0, t + 1, num.data(), den.data(), ref.data());
        for (int64_t c = 0; c < BD; ++c)
          A[t * BD + c] = num[c] / den[c], L[t * BD + c] = ref[c] + std::log(den[c]);
      }
    });
  }
}

// Backward: with r = dA, u = dA (.) A and P_t,t' = exp(w + K - L): dV = sum_t P r, dK = sum_t P (r V - u),
// dw_t,t' = sum over columns of P (r V_t' - u) (dw null: w needs no gradient, and the R GEMM, a third of the
// backward's flops, and the pair-by-pair dw rows are skipped).
void full_causal_backward(const FullHead& h, const float* A, const float* L, const float* G, float* dK,
                          float* dV, float* dw) {
  const int64_t N = h.N, BD = h.BD;
  const CausalPlan p = causal_plan(h);
  std::fill(dK, dK + N * BD, 0.f), std::fill(dV, dV + N * BD, 0.f);
  ScratchBuffer X(N * 2 * BD), E(kBlock * N), GH(kBlock * 2 * BD), Q(N * 2 * BD), R(dw ? kBlock * N : 0);
  causal_operand(h, p.r.data(), X.data);
  std::fill(Q.data, Q.data + N * 2 * BD, 0.f);
  const int64_t chunk = 64;  // columns per work item of the pair loops
  for (int64_t i0 = 0; i0 < N; i0 += kBlock) {
    const int64_t i1 = std::min(N, i0 + kBlock), C = i1 - i0;
    if (std::any_of(p.gemm.begin() + i0, p.gemm.begin() + i1, [](uint8_t g) { return g != 0; })) {
      causal_bias_block(h, p, i0, i1, E.data);
      // [G | -H], G = r exp(a - L), H = u exp(a - L): the weights' factor left out of E and X.
      parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
        for (int64_t t = i0 + from; t < i0 + to; ++t) {
          float* gh = GH.data + (t - i0) * 2 * BD;
#pragma omp simd
          for (int64_t c = 0; c < BD; ++c) {
            const int64_t o = t * BD + c;
            const float f = p.gemm[t] ? fast_exp(p.a[t] - L[o]) : 0.f;
            gh[c] = G[o] * f, gh[BD + c] = -G[o] * A[o] * f;
          }
        }
      });
      // Q [i1, 2 BD] += E^T [G | -H]; dw [C, i1] = E (.) ([G | -H] X^T) on and below the diagonal.
      column_sgemm(true, false, i1, 2 * BD, C, E.data, i1, GH.data, 2 * BD, 1.f, Q.data, 2 * BD);
      if (dw) {
        column_sgemm(false, true, C, i1, 2 * BD, GH.data, 2 * BD, X.data, 2 * BD, 0.f, R.data, i1);
        for (int64_t t = i0; t < i1; ++t)
          if (p.gemm[t])
            for (int64_t j = 0; j <= t; ++j)
              dw[t * h.ldw + j] = E.data[(t - i0) * i1 + j] * R.data[(t - i0) * i1 + j];
      }
    }
    // The rows the GEMM does not serve, pair by pair: dK, dV by column chunks (each column's sums in one
    // order), dw by rows.
    if (std::all_of(p.gemm.begin() + i0, p.gemm.begin() + i1, [](uint8_t g) { return g != 0; })) continue;
    parallel::parallel_for((BD + chunk - 1) / chunk, 1, [&](int64_t from, int64_t to) {
      for (int64_t cc = from; cc < to; ++cc) {
        const int64_t c0 = cc * chunk, c1 = std::min(BD, c0 + chunk);
        for (int64_t t = i0; t < i1; ++t) {
          if (p.gemm[t]) continue;
          for (int64_t j = 0; j <= t; ++j) {
            const float wb = h.w[t * h.ldw + j];
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t o = t * BD + c;
              const float pw = fast_exp(h.K[j * BD + c] + wb - L[o]);
              dV[j * BD + c] += pw * G[o], dK[j * BD + c] += pw * G[o] * (h.V[j * BD + c] - A[o]);
            }
          }
        }
      }
    });
    if (!dw) continue;
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      for (int64_t t = i0 + from; t < i0 + to; ++t) {
        if (p.gemm[t]) continue;
        for (int64_t j = 0; j <= t; ++j) {
          const float wb = h.w[t * h.ldw + j];
          float acc = 0.f;
          for (int64_t c = 0; c < BD; ++c) {
            const int64_t o = t * BD + c;
            acc += fast_exp(h.K[j * BD + c] + wb - L[o]) * G[o] * (h.V[j * BD + c] - A[o]);
          }
          dw[t * h.ldw + j] = acc;
        }
      }
    });
  }
  parallel::parallel_for(N, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
#pragma omp simd
      for (int64_t c = 0; c < BD; ++c) {
        const float x = X.data[j * 2 * BD + BD + c], vg = x * Q.data[j * 2 * BD + c];
        dV[j * BD + c] += vg, dK[j * BD + c] += h.V[j * BD + c] * vg + x * Q.data[j * 2 * BD + BD + c];
      }
  });
}

// [B, H, N, d] head h <-> [N, B d].
void to_columns(const float* x, int64_t B, int64_t H, int64_t N, int64_t d, int64_t h, float* out) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      std::memcpy(out + t * B * d + b * d, x + ((b * H + h) * N + t) * d, size_t(d) * sizeof(float));
}
void from_columns(const float* in, int64_t B, int64_t H, int64_t N, int64_t d, int64_t h, float* x) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      std::memcpy(x + ((b * H + h) * N + t) * d, in + t * B * d + b * d, size_t(d) * sizeof(float));
}

// The backward of a per-head kernel in column layout (k, v [B, H, M, d] contiguous, w [H, R, ldw], the
// forward's A [B, H, N, d] and log-normalizers Ls [N, B d] per head): per head, K, V, A and the upstream G to
// columns, backward(head, A, L, G, dK, dV, dw rows) and dK, dV back -> {dk, dv, dw} (dw undefined, and
// the dw rows null, where w needs no gradient).
template <class Backward>
std::vector<Tensor> backward_by_heads(const Tensor& kc, const Tensor& vc, const Tensor& wc, const Tensor& Ad,
                                      const Tensor& g, const std::vector<Tensor>& Ls, bool need_w,
                                      Backward backward) {
  const int64_t B = kc.size(0), H = kc.size(1), M = kc.size(2), d = kc.size(3), N = Ad.size(2), BD = B * d;
  const int64_t R = wc.size(1), ldw = wc.size(2);
  Tensor gc = g.contiguous_data();
  Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape()),
         dw = need_w ? Tensor::zeros(wc.shape()) : Tensor();
  Tensor Kh = Tensor::empty({M, BD}), Vh = Tensor::empty({M, BD}), Ah = Tensor::empty({N, BD}),
         Gh = Tensor::empty({N, BD}), dKh = Tensor::empty({M, BD}), dVh = Tensor::empty({M, BD});
  for (int64_t h = 0; h < H; ++h) {
    to_columns(kc.data<float>(), B, H, M, d, h, Kh.data<float>());
    to_columns(vc.data<float>(), B, H, M, d, h, Vh.data<float>());
    to_columns(Ad.data<float>(), B, H, N, d, h, Ah.data<float>());
    to_columns(gc.data<float>(), B, H, N, d, h, Gh.data<float>());
    const FullHead fh{Kh.data<float>(), Vh.data<float>(), wc.data<float>() + h * R * ldw, M, BD, ldw};
    backward(fh, Ah.data<float>(), Ls[h].data<float>(), Gh.data<float>(), dKh.data<float>(),
             dVh.data<float>(), need_w ? dw.data<float>() + h * R * ldw : nullptr);
    from_columns(dKh.data<float>(), B, H, M, d, h, dk.data<float>());
    from_columns(dVh.data<float>(), B, H, M, d, h, dv.data<float>());
  }
  return {dk, dv, dw};
}

}  // namespace
}  // namespace eformer::kernels

namespace eformer::attention {

Tensor aft_full_causal(const Tensor& k, const Tensor& v, const Tensor& w, const char* op) {
  EF_CHECK(k.defined() && v.defined() && k.dim() == 4 && v.shape() == k.shape() &&
               k.dtype() == DType::Float32 && v.dtype() == DType::Float32,
           ShapeError, op, ": k and v must be float32 [batch, heads, seq, dim] of one shape; got ",
           k.defined() ? k.describe() : "undefined", " and ", v.defined() ? v.describe() : "undefined");
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), d = k.size(3), BD = B * d;
  EF_CHECK(w.defined() && w.dtype() == DType::Float32 && w.dim() == 3 && w.size(0) == H && w.size(1) >= N &&
               w.size(2) >= N,
           ShapeError, op, ": w is ", w.defined() ? w.describe() : "undefined", "; expected [", H, ", >= ", N,
           ", >= ", N, "]");
  Tensor kc = k.contiguous_data(), vc = v.contiguous_data(), wc = w.contiguous_data();
  const int64_t R = wc.size(1), ldw = wc.size(2);
  Tensor A = Tensor::empty({B, H, N, d});
  // Per head, in column layout: K, V, A, L [N, BD] (L kept for the backward).
  std::vector<Tensor> Ls;
  for (int64_t h = 0; h < H; ++h) {
    Tensor Kh = Tensor::empty({N, BD}), Vh = Tensor::empty({N, BD}), Ah = Tensor::empty({N, BD}),
           Lh = Tensor::empty({N, BD});
    kernels::to_columns(kc.data<float>(), B, H, N, d, h, Kh.data<float>());
    kernels::to_columns(vc.data<float>(), B, H, N, d, h, Vh.data<float>());
    const kernels::FullHead fh{
        Kh.data<float>(), Vh.data<float>(), wc.data<float>() + h * R * ldw, N, BD, ldw};
    kernels::full_causal_forward(fh, Ah.data<float>(), Lh.data<float>());
    kernels::from_columns(Ah.data<float>(), B, H, N, d, h, A.data<float>());
    Ls.push_back(Lh);
  }
  Tensor Ad = A.detach();
  const bool need_w = requires_grad(w);  // else no dw (the bidirectional kernel does the same)
  return autograd::record("aft_full_causal", A, {k, v, w}, [kc, vc, wc, Ad, Ls, need_w](const Tensor& g) {
    return kernels::backward_by_heads(kc, vc, wc, Ad, g, Ls, need_w, kernels::full_causal_backward);
  });
}

}  // namespace eformer::attention
