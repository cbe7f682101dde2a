// AFT-full with GEMMs (kernels/aft.h, aft_full_causal and aft_full_bidirectional), one head at a time in
// column layout (K, V [N, B d]: the batch's columns side by side, so one GEMM serves the whole batch).
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
#include <memory>
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
constexpr float kRange = 60.0f;

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

void running_range(const FullHead& h, int64_t j0, int64_t j1, float* kmin, float* kmax) {
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t c = 0; c < h.BD; ++c)
      kmin[c] = std::min(kmin[c], h.K[j * h.BD + c]), kmax[c] = std::max(kmax[c], h.K[j * h.BD + c]);
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
// dw_t,t' = sum over columns of P (r V_t' - u).
void full_causal_backward(const FullHead& h, const float* A, const float* L, const float* G, float* dK,
                          float* dV, float* dw) {
  const int64_t N = h.N, BD = h.BD;
  const CausalPlan p = causal_plan(h);
  std::fill(dK, dK + N * BD, 0.f), std::fill(dV, dV + N * BD, 0.f);
  ScratchBuffer X(N * 2 * BD), E(kBlock * N), GH(kBlock * 2 * BD), Q(N * 2 * BD), R(kBlock * N);
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
      column_sgemm(false, true, C, i1, 2 * BD, GH.data, 2 * BD, X.data, 2 * BD, 0.f, R.data, i1);
      for (int64_t t = i0; t < i1; ++t)
        if (p.gemm[t])
          for (int64_t j = 0; j <= t; ++j)
            dw[t * h.ldw + j] = E.data[(t - i0) * i1 + j] * R.data[(t - i0) * i1 + j];
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

// Bidirectional AFT-full (aft.h, aft_full_bidirectional): every query sees every key, so one reference per
// column, b_c = max_t' K_t',c, and one per row, a_t = max_t' w_t,t', serve all pairs (eq. 2):
//     [num | den]_t = sum_t' E_t,t' X_t',   E = exp(w - a),   X = [exp(K - b) (.) V | exp(K - b)]
//     A = num / den,   L_t = a_t + b + log den
// E is shared by the head's B d columns (and, with one bias head, by every head: the caller folds the heads
// into the batch), so each panel of kPanel rows of E is one [kPanel, M] x [M, 2 B d] GEMM by fixed tiles
// (tile_sgemm: two tiles of rows per panel; a panel's rows are also the depth of the backward's E^T GEMM).
// E is not kept between the passes: the backward remakes it (N M exponentials against 4 N M B d flops per
// GEMM), so the memory is O(kPanel M + M B d) whatever N.
constexpr int64_t kPanel = 512;

// One head's references: b [BD] the column maxima of K, a [N] the row maxima of w, and the largest range of
// K (per column) plus that of w (per row): every factor of the GEMMs is at least exp(-range).
struct BidirRefs {
  std::vector<float> a, b;
  float range = 0.f;
};
BidirRefs bidirectional_refs(const FullHead& h, int64_t N) {
  const int64_t M = h.N, BD = h.BD;
  BidirRefs refs;
  refs.a.resize(size_t(N)), refs.b.assign(size_t(BD), -kInf);
  std::vector<float> lo(size_t(BD), kInf), rw(static_cast<size_t>(N));
  running_range(h, 0, M, lo.data(), refs.b.data());
  parallel::parallel_for(N, 16, [&](int64_t from, int64_t to) {
    for (int64_t t = from; t < to; ++t) {
      const float* wr = h.w + t * h.ldw;
      float mn = kInf, mx = -kInf;
#pragma omp simd reduction(min : mn) reduction(max : mx)
      for (int64_t j = 0; j < M; ++j) mn = std::min(mn, wr[j]), mx = std::max(mx, wr[j]);
      refs.a[size_t(t)] = mx, rw[size_t(t)] = mx - mn;
    }
  });
  for (int64_t c = 0; c < BD; ++c) refs.range = std::max(refs.range, refs.b[size_t(c)] - lo[size_t(c)]);
  refs.range += N > 0 ? *std::max_element(rw.begin(), rw.end()) : 0.f;
  return refs;
}

// X [M, 2 BD] = [exp(K - b) (.) V | exp(K - b)].
void bidirectional_operands(const FullHead& h, const float* b, float* X) {
  const int64_t BD = h.BD;
  parallel::parallel_for(h.N, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
#pragma omp simd
      for (int64_t c = 0; c < BD; ++c) {
        const float e = fast_exp(h.K[j * BD + c] - b[c]);
        X[j * 2 * BD + c] = e * h.V[j * BD + c], X[j * 2 * BD + BD + c] = e;
      }
  });
}

// E [i1 - i0, M] = exp(w_t,t' - a_t) for the rows [i0, i1).
void bias_panel(const FullHead& h, const float* a, int64_t i0, int64_t i1, float* E) {
  const int64_t M = h.N;
  parallel::parallel_for(i1 - i0, 8, [&](int64_t from, int64_t to) {
    for (int64_t r = from; r < to; ++r) {
      const float *wr = h.w + (i0 + r) * h.ldw, m = a[i0 + r];
      float* er = E + r * M;
#pragma omp simd
      for (int64_t j = 0; j < M; ++j) er[j] = fast_exp(wr[j] - m);
    }
  });
}

// Forward of one head: K, V [M, BD] (h.N = M keys), w rows [N, ldw] -> A, L [N, BD].
void full_bidirectional_forward(const FullHead& h, int64_t N, const BidirRefs& refs, float* A, float* L) {
  const int64_t M = h.N, BD = h.BD, rows = std::max<int64_t>(1, std::min(N, kPanel));
  const float *a = refs.a.data(), *b = refs.b.data();
  ScratchBuffer X(M * 2 * BD), E(rows * M), P(rows * 2 * BD);
  bidirectional_operands(h, b, X.data);
  for (int64_t i0 = 0; i0 < N; i0 += rows) {
    const int64_t i1 = std::min(N, i0 + rows), C = i1 - i0;
    bias_panel(h, a, i0, i1, E.data);
    tile_sgemm(false, false, C, 2 * BD, M, E.data, M, X.data, 2 * BD, 0.f, P.data, 2 * BD);
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      for (int64_t r = from; r < to; ++r) {
        const float *num = P.data + r * 2 * BD, *den = num + BD;
        float *Ar = A + (i0 + r) * BD, *Lr = L + (i0 + r) * BD;
#pragma omp simd
        for (int64_t c = 0; c < BD; ++c) Ar[c] = num[c] / den[c], Lr[c] = a[i0 + r] + b[c] + fast_log(den[c]);
      }
    });
  }
}

// Backward of one head, E remade by the forward's panels: with the weights P_t,t' = exp(w + K - L), r = dA,
// u = dA (.) A and [G | -H] = [r | -u] exp(a + b - L) (the factor left out of E and X),
//     Q = E^T [G | -H]  [M, 2 BD]:   dV = e (.) Q_G,   dK = V (.) dV + e (.) Q_H   (e = exp(K - b))
//     dw = E (.) ([G | -H] X^T)      (dw null: w needs no gradient, and this third GEMM is skipped)
void full_bidirectional_backward(const FullHead& h, int64_t N, const BidirRefs& refs, const float* A,
                                 const float* L, const float* G, float* dK, float* dV, float* dw) {
  const int64_t M = h.N, BD = h.BD, rows = std::max<int64_t>(1, std::min(N, kPanel));
  const float *a = refs.a.data(), *b = refs.b.data();
  ScratchBuffer X(M * 2 * BD), E(rows * M), GH(rows * 2 * BD), Q(M * 2 * BD);
  bidirectional_operands(h, b, X.data);
  if (N == 0) std::fill(Q.data, Q.data + M * 2 * BD, 0.f);
  for (int64_t i0 = 0; i0 < N; i0 += rows) {
    const int64_t i1 = std::min(N, i0 + rows), C = i1 - i0;
    bias_panel(h, a, i0, i1, E.data);
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      for (int64_t r = from; r < to; ++r) {
        float* gh = GH.data + r * 2 * BD;
        const int64_t o = (i0 + r) * BD;
#pragma omp simd
        for (int64_t c = 0; c < BD; ++c) {
          const float f = fast_exp(a[i0 + r] + b[c] - L[o + c]);
          gh[c] = G[o + c] * f, gh[BD + c] = -G[o + c] * A[o + c] * f;
        }
      }
    });
    tile_sgemm(true, false, M, 2 * BD, C, E.data, M, GH.data, 2 * BD, i0 == 0 ? 0.f : 1.f, Q.data, 2 * BD);
    if (!dw) continue;
    float* dwp = dw + i0 * h.ldw;
    tile_sgemm(false, true, C, M, 2 * BD, GH.data, 2 * BD, X.data, 2 * BD, 0.f, dwp, h.ldw);
    parallel::parallel_for(C, 8, [&](int64_t from, int64_t to) {
      for (int64_t r = from; r < to; ++r)
#pragma omp simd
        for (int64_t j = 0; j < M; ++j) dwp[r * h.ldw + j] *= E.data[r * M + j];
    });
  }
  parallel::parallel_for(M, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
#pragma omp simd
      for (int64_t c = 0; c < BD; ++c) {
        const float ek = X.data[j * 2 * BD + BD + c], vg = ek * Q.data[j * 2 * BD + c];
        dV[j * BD + c] = vg, dK[j * BD + c] = h.V[j * BD + c] * vg + ek * Q.data[j * 2 * BD + BD + c];
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
// columns, backward(h, head, A, L, G, dK, dV, dw rows) and dK, dV back -> {dk, dv, dw}. need_w false: dw is
// left undefined and the kernel gets a null dw; dense_dw: the kernel writes every dw element of its [N, M].
template <class Backward>
std::vector<Tensor> backward_by_heads(const Tensor& kc, const Tensor& vc, const Tensor& wc, const Tensor& Ad,
                                      const Tensor& g, const std::vector<Tensor>& Ls, bool need_w,
                                      bool dense_dw, Backward backward) {
  const int64_t B = kc.size(0), H = kc.size(1), M = kc.size(2), d = kc.size(3), N = Ad.size(2), BD = B * d;
  const int64_t R = wc.size(1), ldw = wc.size(2);
  Tensor gc = g.contiguous_data();
  Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
  // dense_dw: the kernel writes all of each head's [N, M] corner, so zeros are needed only where w is larger.
  Tensor dw = !need_w                          ? Tensor()
              : dense_dw && R == N && ldw == M ? Tensor::empty(wc.shape())
                                               : Tensor::zeros(wc.shape());
  Tensor Kh = Tensor::empty({M, BD}), Vh = Tensor::empty({M, BD}), Ah = Tensor::empty({N, BD}),
         Gh = Tensor::empty({N, BD}), dKh = Tensor::empty({M, BD}), dVh = Tensor::empty({M, BD});
  for (int64_t h = 0; h < H; ++h) {
    to_columns(kc.data<float>(), B, H, M, d, h, Kh.data<float>());
    to_columns(vc.data<float>(), B, H, M, d, h, Vh.data<float>());
    to_columns(Ad.data<float>(), B, H, N, d, h, Ah.data<float>());
    to_columns(gc.data<float>(), B, H, N, d, h, Gh.data<float>());
    const FullHead fh{Kh.data<float>(), Vh.data<float>(), wc.data<float>() + h * R * ldw, M, BD, ldw};
    backward(h, fh, Ah.data<float>(), Ls[h].data<float>(), Gh.data<float>(), dKh.data<float>(),
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
  return autograd::record("aft_full_causal", A, {k, v, w}, [kc, vc, wc, Ad, Ls](const Tensor& g) {
    return kernels::backward_by_heads(
        kc, vc, wc, Ad, g, Ls, true, false,
        [](int64_t, const kernels::FullHead& fh, const float* A, const float* L, const float* G, float* dK,
           float* dV, float* dw) { kernels::full_causal_backward(fh, A, L, G, dK, dV, dw); });
  });
}

}  // namespace eformer::attention

namespace eformer::attention {

Tensor aft_full_bidirectional(const Tensor& k, const Tensor& v, const Tensor& w, int64_t N, const char* op) {
  EF_CHECK(k.defined() && v.defined() && k.dim() == 4 && v.shape() == k.shape() &&
               k.dtype() == DType::Float32 && v.dtype() == DType::Float32 && k.size(2) >= 1,
           ShapeError, op, ": k and v must be float32 [batch, heads, keys >= 1, dim] of one shape; got ",
           k.defined() ? k.describe() : "undefined", " and ", v.defined() ? v.describe() : "undefined");
  const int64_t B = k.size(0), H = k.size(1), M = k.size(2), d = k.size(3), BD = B * d;
  EF_CHECK(N >= 0 && w.defined() && w.dtype() == DType::Float32 && w.dim() == 3 && w.size(0) == H &&
               w.size(1) >= N && w.size(2) >= M,
           ShapeError, op, ": w is ", w.defined() ? w.describe() : "undefined", "; expected [", H, ", >= ", N,
           ", >= ", M, "]");
  Tensor kc = k.contiguous_data(), vc = v.contiguous_data(), wc = w.contiguous_data();
  const int64_t R = wc.size(1), ldw = wc.size(2);
  std::vector<Tensor> Ks, Vs;                                       // per head, in column layout [M, BD]
  auto refs = std::make_shared<std::vector<kernels::BidirRefs>>();  // per head, kept for the backward
  for (int64_t h = 0; h < H; ++h) {
    Ks.push_back(Tensor::empty({M, BD})), Vs.push_back(Tensor::empty({M, BD}));
    kernels::to_columns(kc.data<float>(), B, H, M, d, h, Ks[h].data<float>());
    kernels::to_columns(vc.data<float>(), B, H, M, d, h, Vs[h].data<float>());
    const kernels::FullHead fh{
        Ks[h].data<float>(), Vs[h].data<float>(), wc.data<float>() + h * R * ldw, M, BD, ldw};
    refs->push_back(kernels::bidirectional_refs(fh, N));
    if (refs->back().range >= kernels::kRange) {  // too wide for the GEMM's factors: exact pairs
      AftLayout L;
      L.kind = AftBias::Dense;
      return aft_average(k, v, w, L, N, {}, op);
    }
  }
  Tensor A = Tensor::empty({B, H, N, d});
  std::vector<Tensor> Ls;  // the log-normalizers [N, BD] per head, kept for the backward
  for (int64_t h = 0; h < H; ++h) {
    Tensor Ah = Tensor::empty({N, BD}), Lh = Tensor::empty({N, BD});
    const kernels::FullHead fh{
        Ks[h].data<float>(), Vs[h].data<float>(), wc.data<float>() + h * R * ldw, M, BD, ldw};
    kernels::full_bidirectional_forward(fh, N, (*refs)[size_t(h)], Ah.data<float>(), Lh.data<float>());
    kernels::from_columns(Ah.data<float>(), B, H, N, d, h, A.data<float>());
    Ls.push_back(Lh);
  }
  Ks.clear(), Vs.clear();  // the backward rebuilds them (memory O(N d) between the passes)
  Tensor Ad = A.detach();
  const bool need_w = requires_grad(w);  // else the backward skips dw, a third of its GEMM flops
  return autograd::record(
      "aft_full_bidirectional", A, {k, v, w}, [kc, vc, wc, Ad, Ls, N, refs, need_w](const Tensor& g) {
        return kernels::backward_by_heads(
            kc, vc, wc, Ad, g, Ls, need_w, true,
            [N, &refs](int64_t h, const kernels::FullHead& fh, const float* A, const float* L, const float* G,
                       float* dK, float* dV, float* dw) {
              kernels::full_bidirectional_backward(fh, N, (*refs)[size_t(h)], A, L, G, dK, dV, dw);
            });
      });
}

}  // namespace eformer::attention
