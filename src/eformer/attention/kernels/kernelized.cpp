#include "eformer/attention/kernels/kernelized.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t C = kKernelizedChunk;

// exp(from - to) for from <= to, with exp(-inf - anything) = 0 (an empty state or a masked key).
inline float shrink(float from, float to) { return from == kNegInf ? 0.f : fast_exp(from - to); }

// One head's inputs: phi_q [N, F], phi_k [N or M, F], v [.., dv], log-scales l (null: 0), key mask
// (null: all real).
struct Head {
  const float *q, *k, *v, *l;
  const bool* km;
  int64_t N, M, F, dv;
  attention::PointwiseMap map;  // applied to q and k as they are loaded
  float log_scale(int64_t j) const { return km && !km[j] ? kNegInf : (l ? l[j] : 0.f); }
};

// Per-thread scratch, carved from one buffer. Fp, Dp: F and dv rounded up to the SIMD width
// (padding columns stay 0, so the tile GEMMs may run over them).
struct Scratch {
  int64_t Fp, Dp;
  float *Q, *K, *Kh, *num, *KT, *V, *D, *VT, *dV, *A, *e, *S, *ST, *z, *pz, *lk, *mu;
  static int64_t floats(int64_t F, int64_t dv) {
    const int64_t Fp = tile::round_up(F), Dp = tile::round_up(dv);
    return 3 * C * Fp + C * std::max(Fp, Dp) + Fp * C + 3 * C * Dp + Dp * C + 2 * C * C + 2 * Fp * Dp + 2 * Fp +
           2 * C;
  }
  Scratch(float* base, int64_t F, int64_t dv) : Fp(tile::round_up(F)), Dp(tile::round_up(dv)) {
    float* p = base;
    auto take = [&](int64_t n) {
      float* r = p;
      p += n;
      return r;
    };
    Q = take(C * Fp), K = take(C * Fp), Kh = take(C * Fp);
    num = take(C * std::max(Fp, Dp));  // numerators [C, Dp], or a chunk's dQ / dK [C, Fp]
    KT = take(Fp * C), V = take(C * Dp), D = take(C * Dp), VT = take(Dp * C), dV = take(C * Dp);
    A = take(C * C), e = take(C * C);  // e: the chunk's stabilized weights exp(l_u - mu_t)
    S = take(Fp * Dp), ST = take(Fp * Dp), z = take(Fp), pz = take(Fp), lk = take(C), mu = take(C);
  }
};

// Copies rows [j0, j0 + c) of x [.., w] into dst [C, wp] (zero padding) and, when dst_t is not
// null, their transpose into dst_t [wp, C].
void load_rows(const float* x, int64_t j0, int64_t c, int64_t w, int64_t wp, float* dst, float* dst_t) {
  std::memset(dst, 0, size_t(C * wp) * sizeof(float));
  for (int64_t t = 0; t < c; ++t) std::memcpy(dst + t * wp, x + (j0 + t) * w, size_t(w) * sizeof(float));
  if (dst_t) {
    std::memset(dst_t, 0, size_t(wp * C) * sizeof(float));
    for (int64_t t = 0; t < c; ++t)
      for (int64_t f = 0; f < w; ++f) dst_t[f * C + t] = dst[t * wp + f];
  }
}

// f(x) in place over rows [0, c) of dst [C, wp] (columns [0, w)): the pointwise feature maps of
// kernelized.h, the same arithmetic as feature_maps.cpp's row maps.
void apply_map(attention::PointwiseMap map, float* dst, int64_t c, int64_t w, int64_t wp) {
  using attention::PointwiseMap;
  if (map == PointwiseMap::Identity) return;
  for (int64_t t = 0; t < c; ++t) {
    float* row = dst + t * wp;
    if (map == PointwiseMap::EluPlusOne) {
      for (int64_t f = 0; f < w; ++f) row[f] = row[f] > 0.f ? row[f] + 1.f : fast_exp(row[f]);
    } else {
      for (int64_t f = 0; f < w; ++f) row[f] = std::max(row[f], 0.f);
    }
  }
}

// load_rows of q or k through the head's feature map (no transpose wanted: dst_t is filled from the
// mapped rows).
void load_features(const Head& h, const float* x, int64_t j0, int64_t c, int64_t wp, float* dst, float* dst_t) {
  load_rows(x, j0, c, h.F, wp, dst, nullptr);
  apply_map(h.map, dst, c, h.F, wp);
  if (dst_t) {
    std::memset(dst_t, 0, size_t(wp * C) * sizeof(float));
    for (int64_t t = 0; t < c; ++t)
      for (int64_t f = 0; f < h.F; ++f) dst_t[f * C + t] = dst[t * wp + f];
  }
}

// dx = dphi o f'(x) for one row, f' from phi = f(x): elu + 1: min(phi, 1) (exp(x) = phi below 0);
// relu: 1 where phi > 0.
void store_grad(attention::PointwiseMap map, const float* dphi, const float* phi, int64_t F, float* dx) {
  using attention::PointwiseMap;
  switch (map) {
    case PointwiseMap::Identity:
      std::memcpy(dx, dphi, size_t(F) * sizeof(float));
      break;
    case PointwiseMap::EluPlusOne:
      for (int64_t f = 0; f < F; ++f) dx[f] = dphi[f] * std::min(phi[f], 1.f);
      break;
    case PointwiseMap::Relu:
      for (int64_t f = 0; f < F; ++f) dx[f] = phi[f] > 0.f ? dphi[f] : 0.f;
      break;
  }
}

void transpose(const float* x, int64_t rows, int64_t cols, float* xt) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) xt[c * rows + r] = x[r * cols + c];
}

// The chunk's running maxima mu[t] = max(mu_in, l_0..l_t) and, in s.e [C, C], the causal weights
// exp(l_u - mu_t) for u <= t (0 above the diagonal and for masked keys), rows t < c. Returns the
// maximum at the chunk's end.
float chunk_weights(const Head& h, int64_t i0, int64_t c, float mu_in, Scratch& s) {
  float mu = mu_in;
  for (int64_t t = 0; t < c; ++t) {
    s.lk[t] = h.log_scale(i0 + t);
    mu = std::max(mu, s.lk[t]);
    s.mu[t] = mu;
  }
  for (int64_t t = 0; t < c; ++t)
    for (int64_t u = 0; u < C; ++u)
      s.e[t * C + u] = (u <= t && s.lk[u] != kNegInf) ? fast_exp(s.lk[u] - s.mu[t]) : 0.f;
  return mu;
}

// out_t = num_t / den_t with the guard of kernelized.h: |den| < kMinDenominator -> output 0 and the
// stored denominator 0 (the backward then gives this query no gradient).
void normalize(const float* num, int64_t ldn, const float* den_raw, int64_t c, int64_t dv, float* out, float* den) {
  for (int64_t t = 0; t < c; ++t) {
    const bool ok = std::abs(den_raw[t]) >= attention::kMinDenominator;
    const float inv = ok ? 1.f / den_raw[t] : 0.f;
    for (int64_t j = 0; j < dv; ++j) out[t * dv + j] = num[t * ldn + j] * inv;
    den[t] = ok ? den_raw[t] : 0.f;
  }
}

// Upstream terms of one chunk of queries: dnum_t = g_t / den_t (into dnum [C, Dp]) and
// dden_t = -(g_t . out_t) / den_t (into dden [C]); both 0 for a guarded query (den 0).
void upstream(const float* g, const float* out, const float* den, int64_t i0, int64_t c, int64_t dv, int64_t Dp,
              float* dnum, float* dden) {
  std::memset(dnum, 0, size_t(C * Dp) * sizeof(float));
  for (int64_t t = 0; t < C; ++t) dden[t] = 0.f;
  for (int64_t t = 0; t < c; ++t) {
    const int64_t i = i0 + t;
    if (den[i] == 0.f) continue;
    const float inv = 1.f / den[i];
    float go = 0.f;
    for (int64_t j = 0; j < dv; ++j) {
      dnum[t * Dp + j] = g[i * dv + j] * inv;
      go += g[i * dv + j] * out[i * dv + j];
    }
    dden[t] = -go * inv;
  }
}

// ---- causal ---------------------------------------------------------------------------------
// State: S [Fp, Dp], z [Fp] scaled by exp(-mu). Per chunk of queries/keys [i0, i0 + c):
//   num_t = exp(mu_prev - mu_t) phi_q_t S + sum_{u <= t} (phi_q_t . phi_k_u) exp(l_u - mu_t) v_u
//   den_t = the same with v replaced by 1
//   S <- exp(mu_prev - mu_end) S + sum_u phi_k_u exp(l_u - mu_end) v_u^T
void causal_forward_head(const Head& h, float* out, float* den, float* S, float* z, float& mu, Scratch& s) {
  const int64_t F = h.F, dv = h.dv, Fp = s.Fp, Dp = s.Dp;
  float den_raw[C];
  for (int64_t i0 = 0; i0 < h.N; i0 += C) {
    const int64_t c = std::min(C, h.N - i0);
    load_features(h, h.q, i0, c, Fp, s.Q, nullptr);
    load_features(h, h.k, i0, c, Fp, s.K, s.KT);
    load_rows(h.v, i0, c, dv, Dp, s.V, nullptr);
    const float mu_prev = mu;
    mu = chunk_weights(h, i0, c, mu_prev, s);
    // Intra-chunk weights W = (Q K^T) o e   [c, C]
    tile::gemm(c, C, Fp, s.Q, Fp, 1, s.KT, C, s.A, C, 1.f, false);
    for (int64_t t = 0; t < c * C; ++t) s.A[t] *= s.e[t];
    // From the state, then the chunk.
    tile::gemm(c, Dp, Fp, s.Q, Fp, 1, S, Dp, s.num, Dp, 1.f, false);
    for (int64_t t = 0; t < c; ++t) {
      const float a = shrink(mu_prev, s.mu[t]);
      float dz = 0.f, dw = 0.f;
      for (int64_t f = 0; f < F; ++f) dz += s.Q[t * Fp + f] * z[f];
      for (int64_t u = 0; u < C; ++u) dw += s.A[t * C + u];
      den_raw[t] = a * dz + dw;
      for (int64_t j = 0; j < Dp; ++j) s.num[t * Dp + j] *= a;
    }
    tile::gemm(c, Dp, C, s.A, C, 1, s.V, Dp, s.num, Dp, 1.f, true);
    normalize(s.num, Dp, den_raw, c, dv, out + i0 * dv, den + i0);
    // State update to the chunk's end.
    const float a = shrink(mu_prev, mu);
    for (int64_t i = 0; i < Fp * Dp; ++i) S[i] *= a;
    for (int64_t f = 0; f < Fp; ++f) z[f] *= a;
    for (int64_t t = 0; t < c; ++t) {
      const float w = shrink(s.lk[t], mu);
      for (int64_t f = 0; f < Fp; ++f) {
        s.Kh[t * Fp + f] = s.K[t * Fp + f] * w;
        z[f] += s.Kh[t * Fp + f];
      }
    }
    tile::gemm(Fp, Dp, c, s.Kh, 1, Fp, s.V, Dp, S, Dp, 1.f, true);
  }
}

// Backward, forward sweep: dphi_q_t = exp(mu_prev - mu_t) (S dnum_t + z dden_t)
//                                     + sum_{u <= t} (dnum_t . v_u + dden_t) exp(l_u - mu_t) phi_k_u.
// Reverse sweep, with P = sum over later queries i of exp(r - mu_i) phi_q_i [dnum_i, dden_i]^T
// (r = the running maximum at the chunk's end, so every factor is <= 1):
//   dv_u      = exp(l_u - r) P_v^T phi_k_u + sum_{t >= u} W_tu dnum_t
//   dphi_k_u  = exp(l_u - r) (P_v v_u + p_z) + sum_{t >= u} (dnum_t . v_u + dden_t) e_tu phi_q_t
//   dl_u      = phi_k_u . dphi_k_u   (w depends on l_u through exp(l_u) only)
void causal_backward_head(const Head& h, const float* out, const float* den, const float* g, float* dq, float* dk,
                          float* dv, float* dl, Scratch& s, float* chunk_end_mu) {
  const int64_t F = h.F, dvn = h.dv, Fp = s.Fp, Dp = s.Dp, N = h.N;
  const int64_t nchunks = (N + C - 1) / C;
  float dden[C];
  float* dnum = s.D;  // [C, Dp]
  float* grad = s.num;  // [C, Fp]: dQ or dK of the chunk
  // Forward sweep (S kept transposed: ST [Dp, Fp]).
  std::memset(s.ST, 0, size_t(Fp * Dp) * sizeof(float));
  std::memset(s.z, 0, size_t(Fp) * sizeof(float));
  float mu = kNegInf;
  for (int64_t ci = 0; ci < nchunks; ++ci) {
    const int64_t i0 = ci * C, c = std::min(C, N - i0);
    load_features(h, h.q, i0, c, Fp, s.Q, nullptr);
    load_features(h, h.k, i0, c, Fp, s.K, nullptr);
    load_rows(h.v, i0, c, dvn, Dp, s.V, s.VT);
    const float mu_prev = mu;
    mu = chunk_weights(h, i0, c, mu_prev, s);
    chunk_end_mu[ci] = mu;
    upstream(g, out, den, i0, c, dvn, Dp, dnum, dden);
    // Dw = (dnum V^T + dden) o e   [c, C]
    tile::gemm(c, C, Dp, dnum, Dp, 1, s.VT, C, s.A, C, 1.f, false);
    for (int64_t t = 0; t < c; ++t)
      for (int64_t u = 0; u < C; ++u) s.A[t * C + u] = (s.A[t * C + u] + dden[t]) * s.e[t * C + u];
    tile::gemm(c, Fp, Dp, dnum, Dp, 1, s.ST, Fp, grad, Fp, 1.f, false);
    for (int64_t t = 0; t < c; ++t) {
      const float a = shrink(mu_prev, s.mu[t]);
      for (int64_t f = 0; f < Fp; ++f) grad[t * Fp + f] = a * (grad[t * Fp + f] + dden[t] * s.z[f]);
    }
    tile::gemm(c, Fp, C, s.A, C, 1, s.K, Fp, grad, Fp, 1.f, true);
    for (int64_t t = 0; t < c; ++t) store_grad(h.map, grad + t * Fp, s.Q + t * Fp, F, dq + (i0 + t) * F);
    // State update: ST <- a ST + V^T Kh
    const float a = shrink(mu_prev, mu);
    for (int64_t i = 0; i < Fp * Dp; ++i) s.ST[i] *= a;
    for (int64_t f = 0; f < Fp; ++f) s.z[f] *= a;
    for (int64_t t = 0; t < c; ++t) {
      const float w = shrink(s.lk[t], mu);
      for (int64_t f = 0; f < Fp; ++f) {
        s.Kh[t * Fp + f] = s.K[t * Fp + f] * w;
        s.z[f] += s.Kh[t * Fp + f];
      }
    }
    tile::gemm(Dp, Fp, c, s.V, 1, Dp, s.Kh, Fp, s.ST, Fp, 1.f, true);
  }
  // Reverse sweep. P [Fp, Dp] and p_z [Fp] (in s.S and s.z), referenced at the current chunk's end.
  std::memset(s.S, 0, size_t(Fp * Dp) * sizeof(float));
  std::memset(s.z, 0, size_t(Fp) * sizeof(float));
  float* PT = s.ST;  // [Dp, Fp]
  for (int64_t ci = nchunks - 1; ci >= 0; --ci) {
    const int64_t i0 = ci * C, c = std::min(C, N - i0);
    const float r = chunk_end_mu[ci], r_prev = ci > 0 ? chunk_end_mu[ci - 1] : kNegInf;
    load_features(h, h.q, i0, c, Fp, s.Q, nullptr);
    load_features(h, h.k, i0, c, Fp, s.K, s.KT);
    load_rows(h.v, i0, c, dvn, Dp, s.V, s.VT);
    chunk_weights(h, i0, c, r_prev, s);
    upstream(g, out, den, i0, c, dvn, Dp, dnum, dden);
    // Later chunks: ek_u = exp(l_u - r); Kh = phi_k o ek.
    float ek[C];
    for (int64_t u = 0; u < c; ++u) ek[u] = shrink(s.lk[u], r);
    for (int64_t u = 0; u < c; ++u)
      for (int64_t f = 0; f < Fp; ++f) s.Kh[u * Fp + f] = s.K[u * Fp + f] * ek[u];
    float* dV = s.dV;
    tile::gemm(c, Dp, Fp, s.Kh, Fp, 1, s.S, Dp, dV, Dp, 1.f, false);
    transpose(s.S, Fp, Dp, PT);
    tile::gemm(c, Fp, Dp, s.V, Dp, 1, PT, Fp, grad, Fp, 1.f, false);
    for (int64_t u = 0; u < c; ++u)
      for (int64_t f = 0; f < Fp; ++f) grad[u * Fp + f] = ek[u] * (grad[u * Fp + f] + s.z[f]);
    // This chunk: W = (Q K^T) o e, Dw = (dnum V^T + dden) o e.
    tile::gemm(c, C, Fp, s.Q, Fp, 1, s.KT, C, s.A, C, 1.f, false);
    for (int64_t t = 0; t < c * C; ++t) s.A[t] *= s.e[t];
    tile::gemm(c, Dp, c, s.A, 1, C, dnum, Dp, dV, Dp, 1.f, true);  // dV += W^T dnum
    tile::gemm(c, C, Dp, dnum, Dp, 1, s.VT, C, s.A, C, 1.f, false);
    for (int64_t t = 0; t < c; ++t)
      for (int64_t u = 0; u < C; ++u) s.A[t * C + u] = (s.A[t * C + u] + dden[t]) * s.e[t * C + u];
    tile::gemm(c, Fp, c, s.A, 1, C, s.Q, Fp, grad, Fp, 1.f, true);  // dK += Dw^T Q
    for (int64_t u = 0; u < c; ++u) {
      store_grad(h.map, grad + u * Fp, s.K + u * Fp, F, dk + (i0 + u) * F);
      std::memcpy(dv + (i0 + u) * dvn, dV + u * Dp, size_t(dvn) * sizeof(float));
      if (dl) {
        float acc = 0.f;
        for (int64_t f = 0; f < F; ++f) acc += s.K[u * Fp + f] * grad[u * Fp + f];
        dl[i0 + u] = h.km && !h.km[i0 + u] ? 0.f : acc;
      }
    }
    // Add this chunk's queries to P, re-referenced at the previous chunk's end (mu_t >= r_prev).
    if (r_prev == kNegInf) continue;  // nothing earlier can attend (or this is the first chunk)
    const float a = shrink(r_prev, r);
    for (int64_t i = 0; i < Fp * Dp; ++i) s.S[i] *= a;
    for (int64_t f = 0; f < Fp; ++f) s.z[f] *= a;
    for (int64_t t = 0; t < c; ++t) {
      const float w = shrink(r_prev, s.mu[t]);
      for (int64_t f = 0; f < Fp; ++f) {
        s.Kh[t * Fp + f] = s.Q[t * Fp + f] * w;  // Qh
        s.z[f] += s.Kh[t * Fp + f] * dden[t];
      }
    }
    tile::gemm(Fp, Dp, c, s.Kh, 1, Fp, dnum, Dp, s.S, Dp, 1.f, true);
  }
}

// ---- bidirectional --------------------------------------------------------------------------
// mu = max_j l_j; S = sum_j phi_k_j exp(l_j - mu) v_j^T, z likewise; num = phi_q S, den = phi_q z.
float bidirectional_state(const Head& h, float* S, float* z, Scratch& s) {
  const int64_t Fp = s.Fp, Dp = s.Dp;
  float mu = kNegInf;
  for (int64_t j = 0; j < h.M; ++j) mu = std::max(mu, h.log_scale(j));
  std::memset(S, 0, size_t(Fp * Dp) * sizeof(float));
  std::memset(z, 0, size_t(Fp) * sizeof(float));
  for (int64_t j0 = 0; j0 < h.M; j0 += C) {
    const int64_t c = std::min(C, h.M - j0);
    load_features(h, h.k, j0, c, Fp, s.K, nullptr);
    load_rows(h.v, j0, c, h.dv, Dp, s.V, nullptr);
    for (int64_t u = 0; u < c; ++u) {
      const float w = shrink(h.log_scale(j0 + u), mu);
      for (int64_t f = 0; f < Fp; ++f) {
        s.Kh[u * Fp + f] = s.K[u * Fp + f] * w;
        z[f] += s.Kh[u * Fp + f];
      }
    }
    tile::gemm(Fp, Dp, c, s.Kh, 1, Fp, s.V, Dp, S, Dp, 1.f, true);
  }
  return mu;
}

// The forward's state kept for the backward, [Fp Dp + Fp + 1] floats per head: S, z and mu (so the
// backward need not read phi_k and v once more to rebuild them).
void save_state(const Scratch& s, float mu, float* saved) {
  std::memcpy(saved, s.S, size_t(s.Fp * s.Dp) * sizeof(float));
  std::memcpy(saved + s.Fp * s.Dp, s.z, size_t(s.Fp) * sizeof(float));
  saved[s.Fp * s.Dp + s.Fp] = mu;
}

float load_state(const float* saved, Scratch& s) {
  std::memcpy(s.S, saved, size_t(s.Fp * s.Dp) * sizeof(float));
  std::memcpy(s.z, saved + s.Fp * s.Dp, size_t(s.Fp) * sizeof(float));
  return saved[s.Fp * s.Dp + s.Fp];
}

void bidirectional_forward_head(const Head& h, float* out, float* den, float* saved, Scratch& s) {
  save_state(s, bidirectional_state(h, s.S, s.z, s), saved);
  float den_raw[C];
  for (int64_t i0 = 0; i0 < h.N; i0 += C) {
    const int64_t c = std::min(C, h.N - i0);
    load_features(h, h.q, i0, c, s.Fp, s.Q, nullptr);
    tile::gemm(c, s.Dp, s.Fp, s.Q, s.Fp, 1, s.S, s.Dp, s.num, s.Dp, 1.f, false);
    for (int64_t t = 0; t < c; ++t) {
      float acc = 0.f;
      for (int64_t f = 0; f < h.F; ++f) acc += s.Q[t * s.Fp + f] * s.z[f];
      den_raw[t] = acc;
    }
    normalize(s.num, s.Dp, den_raw, c, h.dv, out + i0 * h.dv, den + i0);
  }
}

// dphi_q = dnum S^T + dden z; P = sum_i phi_q_i dnum_i^T, p_z = sum_i phi_q_i dden_i;
// dv_j = e_j P^T phi_k_j; dphi_k_j = e_j (P v_j + p_z), e_j = exp(l_j - mu); dl_j = phi_k_j . dphi_k_j.
void bidirectional_backward_head(const Head& h, const float* out, const float* den, const float* saved,
                                 const float* g, float* dq, float* dk, float* dv, float* dl, Scratch& s) {
  const int64_t F = h.F, dvn = h.dv, Fp = s.Fp, Dp = s.Dp;
  const float mu = load_state(saved, s);
  transpose(s.S, Fp, Dp, s.ST);
  float* P = s.S;  // S is no longer needed once transposed
  float* pz = s.pz;
  std::memset(pz, 0, size_t(Fp) * sizeof(float));
  float dden[C];
  float* dnum = s.D;
  float* grad = s.num;
  for (int64_t i0 = 0; i0 < h.N; i0 += C) {
    const int64_t c = std::min(C, h.N - i0);
    load_features(h, h.q, i0, c, Fp, s.Q, nullptr);
    upstream(g, out, den, i0, c, dvn, Dp, dnum, dden);
    tile::gemm(c, Fp, Dp, dnum, Dp, 1, s.ST, Fp, grad, Fp, 1.f, false);
    for (int64_t t = 0; t < c; ++t) {
      for (int64_t f = 0; f < F; ++f) grad[t * Fp + f] += dden[t] * s.z[f];
      store_grad(h.map, grad + t * Fp, s.Q + t * Fp, F, dq + (i0 + t) * F);
    }
    // P accumulates over the query chunks (first chunk overwrites S's values).
    tile::gemm(Fp, Dp, c, s.Q, 1, Fp, dnum, Dp, P, Dp, 1.f, i0 > 0);
    for (int64_t t = 0; t < c; ++t)
      for (int64_t f = 0; f < Fp; ++f) pz[f] += s.Q[t * Fp + f] * dden[t];
  }
  if (h.N == 0) std::memset(P, 0, size_t(Fp * Dp) * sizeof(float));
  transpose(P, Fp, Dp, s.ST);  // P^T [Dp, Fp]
  for (int64_t j0 = 0; j0 < h.M; j0 += C) {
    const int64_t c = std::min(C, h.M - j0);
    load_features(h, h.k, j0, c, Fp, s.K, nullptr);
    load_rows(h.v, j0, c, dvn, Dp, s.V, nullptr);
    float ek[C];
    for (int64_t u = 0; u < c; ++u) ek[u] = shrink(h.log_scale(j0 + u), mu);
    for (int64_t u = 0; u < c; ++u)
      for (int64_t f = 0; f < Fp; ++f) s.Kh[u * Fp + f] = s.K[u * Fp + f] * ek[u];
    tile::gemm(c, Dp, Fp, s.Kh, Fp, 1, P, Dp, s.dV, Dp, 1.f, false);
    tile::gemm(c, Fp, Dp, s.V, Dp, 1, s.ST, Fp, grad, Fp, 1.f, false);
    for (int64_t u = 0; u < c; ++u) {
      float acc = 0.f;
      for (int64_t f = 0; f < F; ++f) {
        const float gk = ek[u] * (grad[u * Fp + f] + pz[f]);
        grad[u * Fp + f] = gk;
        acc += s.K[u * Fp + f] * gk;
      }
      store_grad(h.map, grad + u * Fp, s.K + u * Fp, F, dk + (j0 + u) * F);
      if (dl) dl[j0 + u] = acc;
      std::memcpy(dv + (j0 + u) * dvn, s.dV + u * Dp, size_t(dvn) * sizeof(float));
    }
  }
}

}  // namespace

// Floats per head of the bidirectional forward's saved state (S, z, mu; see save_state).
int64_t state_floats(int64_t F, int64_t dv) {
  return tile::round_up(F) * tile::round_up(dv) + tile::round_up(F) + 1;
}

// phi_q [BH, N, F], phi_k [BH, M, F], v [BH, M, dv], log_scale [BH, M] or null, key_mask [B, M] or
// null -> out [BH, N, dv], den [BH, N] (the denominators used; 0 where guarded) and, bidirectional,
// state [BH, state_floats] for the backward.
void kernelized_attention_forward(const float* phi_q, const float* phi_k, const float* v, const float* log_scale,
                                  const bool* key_mask, float* out, float* den, float* state, int64_t B, int64_t H,
                                  int64_t N, int64_t M, int64_t F, int64_t dv, bool causal,
                                  attention::PointwiseMap map) {
  for_each_item(B * H, Scratch::floats(F, dv), [&](int64_t bh, float* buffer) {
    Scratch s(buffer, F, dv);
    const Head h{phi_q + bh * N * F, phi_k + bh * M * F,     v + bh * M * dv, log_scale ? log_scale + bh * M : nullptr,
                 key_mask ? key_mask + (bh / H) * M : nullptr, N, M, F, dv, map};
    if (causal) {
      std::memset(s.S, 0, size_t(s.Fp * s.Dp) * sizeof(float));
      std::memset(s.z, 0, size_t(s.Fp) * sizeof(float));
      float mu = kNegInf;
      causal_forward_head(h, out + bh * N * dv, den + bh * N, s.S, s.z, mu, s);
    } else {
      bidirectional_forward_head(h, out + bh * N * dv, den + bh * N, state + bh * state_floats(F, dv), s);
    }
  });
}

// Inputs as above plus dout [BH, N, dv] -> dphi_q, dphi_k, dv, dlog_scale [BH, M] (when not null).
void kernelized_attention_backward(const float* phi_q, const float* phi_k, const float* v, const float* log_scale,
                                   const bool* key_mask, const float* out, const float* den, const float* state,
                                   const float* dout,
                                   float* dphi_q, float* dphi_k, float* dv_out, float* dlog_scale, int64_t B,
                                   int64_t H, int64_t N, int64_t M, int64_t F, int64_t dv, bool causal,
                                   attention::PointwiseMap map) {
  const int64_t nchunks = (N + C - 1) / C;
  for_each_item(B * H, Scratch::floats(F, dv) + nchunks, [&](int64_t bh, float* buffer) {
    Scratch s(buffer, F, dv);
    const Head h{phi_q + bh * N * F, phi_k + bh * M * F,     v + bh * M * dv, log_scale ? log_scale + bh * M : nullptr,
                 key_mask ? key_mask + (bh / H) * M : nullptr, N, M, F, dv, map};
    float* dl = dlog_scale ? dlog_scale + bh * M : nullptr;
    if (causal)
      causal_backward_head(h, out + bh * N * dv, den + bh * N, dout + bh * N * dv, dphi_q + bh * N * F,
                           dphi_k + bh * M * F, dv_out + bh * M * dv, dl, s, buffer + Scratch::floats(F, dv));
    else
      bidirectional_backward_head(h, out + bh * N * dv, den + bh * N, state + bh * state_floats(F, dv),
                                  dout + bh * N * dv, dphi_q + bh * N * F, dphi_k + bh * M * F,
                                  dv_out + bh * M * dv, dl, s);
  });
}

// The causal forward continuing from a state: S [BH, F, dv], z [BH, F], mu [BH] (updated).
void kernelized_attention_step(const float* phi_q, const float* phi_k, const float* v, const float* log_scale,
                               float* out, float* S, float* z, float* mu, int64_t BH, int64_t T, int64_t F,
                               int64_t dv) {
  std::vector<float> den(size_t(BH * T));
  for_each_item(BH, Scratch::floats(F, dv), [&](int64_t bh, float* buffer) {
    Scratch s(buffer, F, dv);
    const Head h{phi_q + bh * T * F, phi_k + bh * T * F, v + bh * T * dv, log_scale ? log_scale + bh * T : nullptr,
                 nullptr, T, T, F, dv, attention::PointwiseMap::Identity};
    // The state in padded layout.
    std::memset(s.S, 0, size_t(s.Fp * s.Dp) * sizeof(float));
    std::memset(s.z, 0, size_t(s.Fp) * sizeof(float));
    for (int64_t f = 0; f < F; ++f) {
      std::memcpy(s.S + f * s.Dp, S + (bh * F + f) * dv, size_t(dv) * sizeof(float));
      s.z[f] = z[bh * F + f];
    }
    causal_forward_head(h, out + bh * T * dv, den.data() + bh * T, s.S, s.z, mu[bh], s);
    for (int64_t f = 0; f < F; ++f) {
      std::memcpy(S + (bh * F + f) * dv, s.S + f * s.Dp, size_t(dv) * sizeof(float));
      z[bh * F + f] = s.z[f];
    }
  });
}

}  // namespace eformer::kernels

namespace eformer::attention {
namespace {

struct KernelizedDims {
  int64_t B, H, N, M, F, dv;
};

KernelizedDims validate(const char* op, const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                        const Tensor& log_scale_k, bool causal, const Tensor& key_mask) {
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor&>{"phi_q", phi_q}, {"phi_k", phi_k}, {"v", v}}) {
    EF_CHECK(t.defined() && t.dtype() == DType::Float32 && t.dim() == 4, ShapeError, op, ": ", name, " is ",
             t.defined() ? t.describe() : std::string("undefined"), "; expected float32 [batch, heads, seq, dim]");
  }
  KernelizedDims s{phi_q.size(0), phi_q.size(1), phi_q.size(2), phi_k.size(2), phi_q.size(3), v.size(3)};
  EF_CHECK(phi_k.size(0) == s.B && phi_k.size(1) == s.H && phi_k.size(3) == s.F, ShapeError, op, ": phi_k is ",
           phi_k.describe(), " but phi_q is ", phi_q.describe(), "; expected [", s.B, ", ", s.H, ", M, ", s.F, "]");
  EF_CHECK(v.size(0) == s.B && v.size(1) == s.H && v.size(2) == s.M, ShapeError, op, ": v is ", v.describe(),
           " but phi_k is ", phi_k.describe(), "; expected [", s.B, ", ", s.H, ", ", s.M, ", dv]");
  if (log_scale_k.defined())
    EF_CHECK(log_scale_k.dtype() == DType::Float32 && log_scale_k.shape() == Shape({s.B, s.H, s.M}), ShapeError, op,
             ": log_scale_k is ", log_scale_k.describe(), "; expected float32 [", s.B, ", ", s.H, ", ", s.M, "]");
  if (key_mask.defined())
    EF_CHECK(key_mask.dtype() == DType::Bool && key_mask.shape() == Shape({s.B, s.M}), ShapeError, op,
             ": key_mask is ", key_mask.describe(), "; expected bool [batch, keys] = [", s.B, ", ", s.M, "]");
  EF_CHECK(!causal || s.N == s.M, ShapeError, op, ": causal needs as many queries as keys; got N = ", s.N,
           " and M = ", s.M);
  EF_CHECK(s.F > 0, ShapeError, op, ": the feature dimension is 0");
  return s;
}

}  // namespace

Tensor kernelized_attention(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, const Tensor& log_scale_k,
                            bool causal, const Tensor& key_mask, PointwiseMap map) {
  const KernelizedDims s = validate("kernelized_attention", phi_q, phi_k, v, log_scale_k, causal, key_mask);
  Tensor qc = phi_q.contiguous_data(), kc = phi_k.contiguous_data(), vc = v.contiguous_data();
  Tensor lc = log_scale_k.defined() ? log_scale_k.contiguous_data() : Tensor();
  Tensor km = key_mask.defined() ? key_mask.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.dv});
  Tensor den = Tensor::empty({s.B, s.H, s.N});
  Tensor state = causal ? Tensor() : Tensor::empty({s.B * s.H, kernels::state_floats(s.F, s.dv)});
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
  if (out.numel() > 0)
    kernels::kernelized_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(), ptr(lc),
                                          km.defined() ? km.data<bool>() : nullptr, out.data<float>(),
                                          den.data<float>(), ptr(state), s.B, s.H, s.N, s.M, s.F, s.dv, causal,
                                          map);
  else
    out = Tensor::zeros(out.shape());
  Tensor od = out.detach();
  std::vector<Tensor> inputs = {phi_q, phi_k, v};
  if (log_scale_k.defined()) inputs.push_back(log_scale_k);
  return autograd::record(
      "kernelized_attention", out, inputs, [qc, kc, vc, lc, km, od, den, state, s, causal, map](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dq = Tensor::zeros(qc.shape()), dk = Tensor::zeros(kc.shape()), dv = Tensor::zeros(vc.shape());
        Tensor dl = lc.defined() ? Tensor::zeros(lc.shape()) : Tensor();
        auto ptr = [](const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
        if (od.numel() > 0 && s.M > 0)
          kernels::kernelized_attention_backward(qc.data<float>(), kc.data<float>(), vc.data<float>(), ptr(lc),
                                                 km.defined() ? km.data<bool>() : nullptr, od.data<float>(),
                                                 den.data<float>(), ptr(state), gc.data<float>(), dq.data<float>(),
                                                 dk.data<float>(), dv.data<float>(), ptr(dl), s.B, s.H, s.N, s.M,
                                                 s.F, s.dv, causal, map);
        std::vector<Tensor> grads = {dq, dk, dv};
        if (lc.defined()) grads.push_back(dl);
        return grads;
      });
}

Tensor kernelized_attention_step(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, const Tensor& log_scale_k,
                                 KernelizedState& state) {
  const KernelizedDims s = validate("kernelized_attention_step", phi_q, phi_k, v, log_scale_k, true, Tensor());
  if (!state.s.defined()) {
    state.s = Tensor::zeros({s.B, s.H, s.F, s.dv});
    state.z = Tensor::zeros({s.B, s.H, s.F});
    state.mu = Tensor::full({s.B, s.H}, -std::numeric_limits<double>::infinity());
  }
  EF_CHECK(state.s.shape() == Shape({s.B, s.H, s.F, s.dv}), ShapeError,
           "kernelized_attention_step: the state holds S ", state.s.describe(), " but the inputs give [", s.B, ", ",
           s.H, ", ", s.F, ", ", s.dv, "]");
  Tensor qc = phi_q.contiguous_data(), kc = phi_k.contiguous_data(), vc = v.contiguous_data();
  Tensor lc = log_scale_k.defined() ? log_scale_k.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.dv});
  if (s.N > 0)
    kernels::kernelized_attention_step(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                       lc.defined() ? lc.data<float>() : nullptr, out.data<float>(),
                                       state.s.data<float>(), state.z.data<float>(), state.mu.data<float>(),
                                       s.B * s.H, s.N, s.F, s.dv);
  state.length += s.N;
  return out;
}

}  // namespace eformer::attention
