#include "eformer/attention/kernels/aft.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/aft_pairs.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/shape.h"

namespace eformer::kernels {

// Query t's average from the prefix sums `pre`, the suffix sums `suf` (null: none) and its window:
// A [d], lse [d]; m, num, den: scratch [d].
void average_row(const AftHead& h, int64_t t, const Running& pre, const Running* suf, float* A, float* lse,
                 float* m, float* num, float* den) {
  const int64_t d = h.d, j0 = h.first(t), j1 = h.last(t);
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) m[c] = suf ? std::max(pre.mx[c], suf->mx[c]) : pre.mx[c];
  for (int64_t j = j0; j < j1; ++j) {
    if (!h.real(j)) continue;
    const float wb = h.bias(t, j);
    const float* kk = h.key(j);
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) m[c] = std::max(m[c], kk[c] + wb);
  }
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) m[c] = m[c] == -kInf ? 0.f : m[c];  // no real key: den stays 0
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) {
    const float s = fast_exp(pre.mx[c] - m[c]);
    num[c] = pre.num[c] * s, den[c] = pre.den[c] * s;
  }
  if (suf) {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float s = fast_exp(suf->mx[c] - m[c]);
      num[c] += suf->num[c] * s, den[c] += suf->den[c] * s;
    }
  }
  for (int64_t j = j0; j < j1; ++j) {
    if (!h.real(j)) continue;
    const float wb = h.bias(t, j);
    const float *kk = h.key(j), *vv = h.value(j);
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float e = fast_exp(kk[c] + wb - m[c]);
      num[c] += e * vv[c], den[c] += e;
    }
  }
  // A query with no real key (every key padded) outputs 0, with lse = -inf (no gradient); otherwise the
  // part holding the maximum m contributes 1, so den >= 1 and fast_log applies.
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) {
    const bool any = den[c] > 0.f;
    A[c] = any ? num[c] / den[c] : 0.f, lse[c] = any ? m[c] + fast_log(den[c]) : -kInf;
  }
}

// The causal sweep over queries [t0, t1) (A, lse [t1 - t0, d]): keys that leave the window (< lo(t))
// move into the prefix sums; `next` is the first key not yet in them. Serves forward and step.
void causal_sweep(const AftHead& h, int64_t t0, int64_t t1, int64_t& next, Running& pre, float* A, float* lse,
                  float* scratch) {
  const int64_t d = h.d;
  for (int64_t t = t0; t < t1; ++t) {
    for (; next < h.first(t); ++next)
      if (h.real(next)) pre.add(h.key(next), h.value(next), d);
    average_row(h, t, pre, nullptr, A + (t - t0) * d, lse + (t - t0) * d, scratch, scratch + d,
                scratch + 2 * d);
  }
}

void suffix_sums(const AftHead& h, int64_t N, float* num, float* den, float* mx) {
  const int64_t d = h.d;
  std::vector<float> run(static_cast<size_t>(3 * d));
  Running r{run.data(), run.data() + d, run.data() + 2 * d};
  r.reset(d);
  int64_t low = h.M;  // the suffix holds keys [low, M)
  for (int64_t t = N - 1; t >= 0; --t) {
    for (; low > h.last(t); --low)
      if (h.real(low - 1)) r.add(h.key(low - 1), h.value(low - 1), d);
    std::memcpy(num + t * d, r.num, size_t(d) * sizeof(float));
    std::memcpy(den + t * d, r.den, size_t(d) * sizeof(float));
    std::memcpy(mx + t * d, r.mx, size_t(d) * sizeof(float));
  }
}

// Bidirectional: a reverse pass stores each query's suffix sums (keys after its window) in A, lse and
// sm [N, d]; the forward pass then adds the prefix sums and the window.
void bidirectional_head(const AftHead& h, int64_t N, float* A, float* lse, float* sm, float* scratch) {
  const int64_t d = h.d;
  suffix_sums(h, N, A, lse, sm);
  Running r{scratch + 3 * d, scratch + 4 * d, scratch + 5 * d};
  r.reset(d);
  int64_t next = 0;
  for (int64_t t = 0; t < N; ++t) {
    for (; next < h.first(t); ++next)
      if (h.real(next)) r.add(h.key(next), h.value(next), d);
    const Running suf{A + t * d, lse + t * d, sm + t * d};
    average_row(h, t, r, &suf, A + t * d, lse + t * d, scratch, scratch + d, scratch + 2 * d);
  }
}

void window_row_backward(const AftHead& h, int64_t t, const float* At, const float* lt, const float* gt,
                         float* dk, float* dv) {
  const int64_t d = h.d;
  if (lt[0] == -kInf) return;
  for (int64_t j = h.first(t); j < h.last(t); ++j) {
    if (!h.real(j)) continue;
    const float wb = h.bias(t, j);
    const float* kk = h.key(j);
    float *dkj = dk + j * d, *dvj = dv + j * d;
    for (int64_t c = 0; c < d; ++c) {
      const float pw = fast_exp(kk[c] + wb - lt[c]);
      dvj[c] += pw * gt[c], dkj[c] -= pw * gt[c] * At[c];
    }
  }
}

void outside_window_backward(const AftHead& h, int64_t N, const float* A, const float* lse, const float* g,
                             float* dk, float* dv, float* scratch) {
  const int64_t d = h.d, M = h.M;
  QuerySums q{scratch, scratch + d, scratch + 2 * d};
  if (!h.dense) {  // prefix keys: query t holds key j < first(t); first is non-decreasing in t
    q.reset(d);
    int64_t from = N;  // queries [from, N) are held
    for (int64_t j = M - 1; j >= 0; --j) {
      for (; from > 0 && h.first(from - 1) > j; --from)
        q.add(g + (from - 1) * d, A + (from - 1) * d, lse + (from - 1) * d, d);
      if (h.real(j)) q.apply(h.key(j), dv + j * d, dk + j * d, d);
    }
  }
  if (!h.dense && !h.causal) {  // suffix keys: query t holds key j >= last(t)
    q.reset(d);
    int64_t upto = 0;  // queries [0, upto) are held
    for (int64_t j = 0; j < M; ++j) {
      for (; upto < N && h.last(upto) <= j; ++upto) q.add(g + upto * d, A + upto * d, lse + upto * d, d);
      if (h.real(j)) q.apply(h.key(j), dv + j * d, dk + j * d, d);
    }
  }
}

// Backward of one (batch, head) for k and v. With r_t = dA_t and u_t = dA_t (.) A_t per channel and the
// weights P_t,t' = exp(K_t' + w_t,t' - lse_t):  dV_t' = sum_t P_t,t' r_t,
// dK_t' = V_t' (.) dV_t' - sum_t P_t,t' u_t.  Window pairs directly; prefix and suffix keys through
// QuerySums (the queries that see key t' with bias 0 are those whose window starts after it, or ends
// before it).
void backward_head(const AftHead& h, int64_t N, const float* A, const float* lse, const float* g, float* dk,
                   float* dv, float* scratch) {
  const int64_t d = h.d, M = h.M;
  std::fill(dk, dk + M * d, 0.f), std::fill(dv, dv + M * d, 0.f);
  for (int64_t t = 0; t < N; ++t) window_row_backward(h, t, A + t * d, lse + t * d, g + t * d, dk, dv);
  outside_window_backward(h, N, A, lse, g, dk, dv, scratch);
  for (int64_t j = 0; j < M; ++j)
    for (int64_t c = 0; c < d; ++c) dk[j * d + c] += h.value(j)[c] * dv[j * d + c];
}

// dw_t,t' += sum_c P_t,t' dA_t (V_t' - A_t) over query t's window, at row[t' - first(t)].
void bias_row_add(const AftHead& h, int64_t t, const float* At, const float* lt, const float* gt,
                  float* row) {
  const int64_t d = h.d, j0 = h.first(t), j1 = h.last(t);
  if (lt[0] == -kInf) return;
  for (int64_t j = j0; j < j1; ++j) {
    if (!h.real(j)) continue;
    const float wb = h.bias(t, j);
    const float *kk = h.key(j), *vv = h.value(j);
    float acc = 0.f;
    for (int64_t c = 0; c < d; ++c) acc += fast_exp(kk[c] + wb - lt[c]) * gt[c] * (vv[c] - At[c]);
    row[j - j0] += acc;
  }
}

// The bias gradient of query row t of head `hh`, summed over the batch in order:
// dw_t,t' = sum_b sum_c P_t,t' dA_t (V_t' - A_t). Written at row[t' - first] for the window's keys.
void bias_row(const AftHead* heads, int64_t B, int64_t H, int64_t hh, int64_t N, int64_t t, const float* A,
              const float* lse, const float* g, float* row) {
  const AftHead& h0 = heads[hh];
  for (int64_t j = h0.first(t); j < h0.last(t); ++j) row[j - h0.first(t)] = 0.f;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o = ((b * H + hh) * N + t) * h0.d;
    bias_row_add(heads[b * H + hh], t, A + o, lse + o, g + o, row);
  }
}

namespace {

// Bidirectional AFT-simple (w = 0, eq. 5) where no key is padded: every query sees every key with bias 0,
// so A_t = sum_t' exp(K_t' - m) V_t' / sum_t' exp(K_t' - m) is the same row for every t (m = max_t' K_t').
// One (batch, head): k, v [M, d] -> A [N, d] (every row that average) and its lse [d].
void global_forward(const float* k, const float* v, int64_t M, int64_t N, int64_t d, float* A, float* lse,
                    float* scratch) {
  float *m = scratch, *num = scratch + d, *den = scratch + 2 * d;
  std::fill(m, m + d, -kInf), std::fill(num, num + d, 0.f), std::fill(den, den + d, 0.f);
  for (int64_t j = 0; j < M; ++j)
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) m[c] = std::max(m[c], k[j * d + c]);
  for (int64_t j = 0; j < M; ++j)
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float e = fast_exp(k[j * d + c] - m[c]);
      num[c] += e * v[j * d + c], den[c] += e;
    }
  for (int64_t c = 0; c < d; ++c) lse[c] = m[c] + std::log(den[c]), num[c] /= den[c];
  for (int64_t t = 0; t < N; ++t) std::memcpy(A + t * d, num, size_t(d) * sizeof(float));
}
// Its backward: with R = sum_t dA_t and P_t' = exp(K_t' - lse), dV_t' = P_t' R, dK_t' = P_t' R (V_t' - A).
void global_backward(const float* k, const float* v, const float* A, const float* lse, const float* g,
                     int64_t M, int64_t N, int64_t d, float* dk, float* dv, float* scratch) {
  float* R = scratch;
  std::fill(R, R + d, 0.f);
  for (int64_t t = 0; t < N; ++t)
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) R[c] += g[t * d + c];
  for (int64_t j = 0; j < M; ++j)
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float pr = fast_exp(k[j * d + c] - lse[c]) * R[c];
      dv[j * d + c] = pr, dk[j * d + c] = pr * (v[j * d + c] - A[c]);
    }
}

}  // namespace
}  // namespace eformer::kernels

namespace eformer::attention {
namespace {

using kernels::AftHead;

struct AftDims {
  int64_t B, H, M, d, N;
  int64_t a = 0, b = 0, head_stride = 0;  // the bias index of aft.h's layouts
};

void validate_kv(const char* op, const Tensor& k, const Tensor& v) {
  EF_CHECK(k.defined() && k.dtype() == DType::Float32 && k.dim() == 4, ShapeError, op, ": k is ",
           k.defined() ? k.describe() : std::string("undefined"),
           "; expected float32 [batch, heads, keys, dim]");
  EF_CHECK(v.defined() && v.dtype() == DType::Float32 && v.shape() == k.shape(), ShapeError, op, ": v is ",
           v.defined() ? v.describe() : std::string("undefined"), "; expected float32 ", k.describe(),
           " (AFT's values have the keys' shape)");
}

// Sizes B, H, M keys, d; N queries; the bias against the layout.
AftDims validate(const char* op, AftDims s, const Tensor& w, const AftLayout& L) {
  const int64_t N = s.N;
  EF_CHECK(s.M >= 1 && N >= 0, ShapeError, op, ": ", s.M, " keys and ", N, " queries; expected >= 1 key");
  EF_CHECK(!L.causal || N == s.M, ShapeError, op, ": causal needs as many queries as keys; got N = ", N,
           " and M = ", s.M);
  if (L.kind == AftBias::None) {
    EF_CHECK(!w.defined(), ValueError, op, ": a bias w was given to the bias-free form (AFT-simple)");
    return s;
  }
  EF_CHECK(w.defined() && w.dtype() == DType::Float32, ShapeError, op, ": w is ",
           w.defined() ? w.describe() : std::string("undefined"), "; expected a float32 position bias");
  if (L.kind == AftBias::Dense) {
    EF_CHECK(w.dim() == 3 && w.size(0) == s.H && w.size(1) >= N && w.size(2) >= s.M, ShapeError, op,
             ": w is ", w.describe(), "; expected [heads, >= N, >= M] = [", s.H, ", >= ", N, ", >= ", s.M,
             "]");
    s.a = w.size(2), s.b = 0, s.head_stride = w.size(1) * w.size(2);
    return s;
  }
  EF_CHECK(L.S >= 1, ValueError, op, ": window width S = ", L.S, "; expected >= 1");
  EF_CHECK(!L.causal || L.p == L.S - 1, ValueError, op, ": a causal window must end at the query: p = ", L.p,
           ", S = ", L.S, "; expected p = S - 1");
  if (L.kind == AftBias::Band) {
    EF_CHECK(w.dim() == 3 && w.size(0) == s.H && w.size(1) >= N && w.size(2) == L.S, ShapeError, op,
             ": w is ", w.describe(), "; expected a band [heads, >= N, S] = [", s.H, ", >= ", N, ", ", L.S,
             "]");
    s.a = L.S - 1, s.b = L.p, s.head_stride = w.size(1) * L.S;
  } else {
    EF_CHECK(w.dim() == 2 && w.size(0) == s.H && w.size(1) == L.S, ShapeError, op, ": w is ", w.describe(),
             "; expected a kernel [heads, S] = [", s.H, ", ", L.S, "]");
    s.a = -1, s.b = L.p, s.head_stride = L.S;
  }
  return s;
}

std::vector<AftHead> heads_of(const AftDims& s, const AftLayout& L, const float* k, const float* v,
                              const float* w, const bool* key_mask, int64_t rows, int64_t k0) {
  std::vector<AftHead> heads(size_t(s.B * s.H));
  for (int64_t bh = 0; bh < s.B * s.H; ++bh)
    heads[bh] = AftHead{k + bh * rows * s.d,
                        v + bh * rows * s.d,
                        w ? w + (bh % s.H) * s.head_stride : nullptr,
                        key_mask ? key_mask + (bh / s.H) * s.M : nullptr,
                        k0,
                        s.M,
                        s.d,
                        s.a,
                        s.b,
                        L.S,
                        L.p,
                        L.kind == AftBias::Dense,
                        L.causal};
  return heads;
}

// Bidirectional AFT-simple without padding (kernels::global_forward): A and lse per (batch, head).
Tensor global_average(const Tensor& k, const Tensor& v, const Tensor& kc, const Tensor& vc,
                      const AftDims& s) {
  const int64_t M = s.M, N = s.N, d = s.d;
  Tensor A = Tensor::empty({s.B, s.H, N, d}), lse = Tensor::empty({s.B, s.H, d});
  const float *pk = kc.data<float>(), *pv = vc.data<float>();
  kernels::for_each_item(s.B * s.H, 3 * d, [&](int64_t bh, float* buf) {
    kernels::global_forward(pk + bh * M * d, pv + bh * M * d, M, N, d, A.data<float>() + bh * N * d,
                            lse.data<float>() + bh * d, buf);
  });
  Tensor Ad = A.detach();
  return autograd::record("aft_global_average", A, {k, v}, [kc, vc, Ad, lse, s](const Tensor& g) {
    const int64_t M = s.M, N = s.N, d = s.d;
    Tensor gc = g.contiguous_data();
    Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
    kernels::for_each_item(s.B * s.H, d, [&](int64_t bh, float* buf) {
      kernels::global_backward(kc.data<float>() + bh * M * d, vc.data<float>() + bh * M * d,
                               Ad.data<float>() + bh * N * d, lse.data<float>() + bh * d,
                               gc.data<float>() + bh * N * d, M, N, d, dk.data<float>() + bh * M * d,
                               dv.data<float>() + bh * M * d, buf);
    });
    return std::vector<Tensor>{dk, dv};
  });
}

}  // namespace

Tensor aft_average(const Tensor& k, const Tensor& v, const Tensor& w, const AftLayout& layout, int64_t N,
                   const Tensor& key_mask, const char* op) {
  validate_kv(op, k, v);
  const AftDims s = validate(op, AftDims{k.size(0), k.size(1), k.size(2), k.size(3), N}, w, layout);
  if (key_mask.defined())
    EF_CHECK(key_mask.dtype() == DType::Bool && key_mask.shape() == Shape({s.B, s.M}), ShapeError, op,
             ": key_mask is ", key_mask.describe(), "; expected bool [batch, keys] = [", s.B, ", ", s.M, "]");
  Tensor kc = k.contiguous_data(), vc = v.contiguous_data(),
         wc = w.defined() ? w.contiguous_data() : Tensor();
  Tensor km = key_mask.defined() ? key_mask.contiguous_data() : Tensor();
  const bool* pm = km.defined() ? km.data<bool>() : nullptr;
  const auto heads = heads_of(s, layout, kc.data<float>(), vc.data<float>(),
                              wc.defined() ? wc.data<float>() : nullptr, pm, s.M, 0);
  // The window as banded GEMMs (kernels/aft_band.cpp) where no key is padded.
  if ((layout.kind == AftBias::Band || layout.kind == AftBias::Toeplitz) && !pm)
    return kernels::band_average(k, v, w, kc, vc, wc, heads, s.B, s.H, N, layout);
  if (layout.kind == AftBias::None && !layout.causal && !pm) return global_average(k, v, kc, vc, s);
  Tensor A = Tensor::empty({s.B, s.H, N, s.d}), lse = Tensor::empty({s.B, s.H, N, s.d});
  const int64_t d = s.d;
  float *pA = A.data<float>(), *pl = lse.data<float>();
  kernels::for_each_item(s.B * s.H, 6 * d + (layout.causal ? 0 : N * d), [&](int64_t bh, float* buf) {
    const AftHead& h = heads[bh];
    float *Ah = pA + bh * N * d, *lh = pl + bh * N * d;
    if (layout.causal) {
      kernels::Running pre{buf + 3 * d, buf + 4 * d, buf + 5 * d};
      pre.reset(d);
      int64_t next = 0;
      kernels::causal_sweep(h, 0, N, next, pre, Ah, lh, buf);
    } else {
      kernels::bidirectional_head(h, N, Ah, lh, buf + 6 * d, buf);
    }
  });
  Tensor Ad = A.detach();
  std::vector<Tensor> inputs = {k, v};
  if (w.defined()) inputs.push_back(w);
  return autograd::record("aft_average", A, inputs, [kc, vc, wc, km, Ad, lse, s, layout, N](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
    const auto heads =
        heads_of(s, layout, kc.data<float>(), vc.data<float>(), wc.defined() ? wc.data<float>() : nullptr,
                 km.defined() ? km.data<bool>() : nullptr, s.M, 0);
    const int64_t d = s.d;
    const float *pA = Ad.data<float>(), *pl = lse.data<float>(), *pg = gc.data<float>();
    kernels::for_each_item(s.B * s.H, 3 * d, [&](int64_t bh, float* buf) {
      kernels::backward_head(heads[bh], N, pA + bh * N * d, pl + bh * N * d, pg + bh * N * d,
                             dk.data<float>() + bh * s.M * d, dv.data<float>() + bh * s.M * d, buf);
    });
    std::vector<Tensor> grads = {dk, dv};
    if (!wc.defined()) return grads;
    // dw: one row (head, query) per work item, the batch summed in order (no thread-dependent sum).
    Tensor dw = Tensor::zeros(wc.shape());
    const bool toeplitz = layout.kind == AftBias::Toeplitz, dense = layout.kind == AftBias::Dense;
    const int64_t width = dense ? wc.size(2) : layout.S;
    Tensor rows = toeplitz ? Tensor::zeros({s.H, N, width}) : Tensor();
    parallel::parallel_for(s.H * N, 8, [&](int64_t from, int64_t to) {
      std::vector<float> row(static_cast<size_t>(width));
      for (int64_t item = from; item < to; ++item) {
        const int64_t hh = item / N, t = item % N;
        const AftHead& h0 = heads[hh];
        const int64_t j0 = h0.first(t), j1 = h0.last(t);
        kernels::bias_row(heads.data(), s.B, s.H, hh, N, t, pA, pl, pg, row.data());
        float* out = toeplitz ? rows.data<float>() + item * width : dw.data<float>() + hh * s.head_stride;
        for (int64_t j = j0; j < j1; ++j)  // the bias index of (t, j), in the band's row for Toeplitz
          out[toeplitz ? j - t + layout.p : t * s.a + j + s.b] = row[j - j0];
      }
    });
    if (toeplitz) {
      const float* r = rows.data<float>();
      float* out = dw.data<float>();
      for (int64_t hh = 0; hh < s.H; ++hh)
        for (int64_t t = 0; t < N; ++t)
          for (int64_t j = 0; j < width; ++j) out[hh * width + j] += r[(hh * N + t) * width + j];
    }
    grads.push_back(dw);
    return grads;
  });
}

Tensor aft_average_step(const Tensor& k, const Tensor& v, const Tensor& w, const AftLayout& layout,
                        AftState& st) {
  const char* op = "aft_average_step";
  EF_CHECK(layout.causal, ValueError, op, ": streaming is causal; the layout is bidirectional");
  validate_kv(op, k, v);
  const int64_t B = k.size(0), H = k.size(1), T = k.size(2), d = k.size(3);
  if (!st.num.defined()) {
    st.num = Tensor::zeros({B, H, d}), st.den = Tensor::zeros({B, H, d});
    st.mx = Tensor::full({B, H, d}, -std::numeric_limits<double>::infinity());
  }
  EF_CHECK(st.num.shape() == Shape({B, H, d}), ShapeError, op, ": the state holds sums ", st.num.describe(),
           " but the new tokens are ", k.describe());
  Tensor kn = k.detach(), vn = v.detach();
  Tensor kc = st.k.defined() ? cat({st.k, kn}, 2) : contiguous(kn);
  Tensor vc = st.v.defined() ? cat({st.v, vn}, 2) : contiguous(vn);
  const int64_t pos = st.length, end = pos + T, rows = kc.size(2);
  // Validate the bias against the full length so far (queries [pos, end), keys [0, end)).
  const AftDims s = validate(op, AftDims{B, H, end, d, end}, w, layout);
  Tensor wc = w.defined() ? w.contiguous_data() : Tensor();
  const auto heads = heads_of(s, layout, kc.data<float>(), vc.data<float>(),
                              wc.defined() ? wc.data<float>() : nullptr, nullptr, rows, st.next);
  Tensor A = Tensor::empty({B, H, T, d}), lse = Tensor::empty({B, H, T, d});
  std::vector<int64_t> next(size_t(B * H), st.next);
  kernels::for_each_item(B * H, 3 * d, [&](int64_t bh, float* buf) {
    kernels::Running pre{st.num.data<float>() + bh * d, st.den.data<float>() + bh * d,
                         st.mx.data<float>() + bh * d};
    kernels::causal_sweep(heads[bh], pos, end, next[bh], pre, A.data<float>() + bh * T * d,
                          lse.data<float>() + bh * T * d, buf);
  });
  // Keep only the keys a future window can still reach.
  // Keep only the keys not yet in the prefix sums (the last p + 1; all for Dense; none for None).
  st.k = contiguous(slice(kc, 2, next[0] - st.next, rows));
  st.v = contiguous(slice(vc, 2, next[0] - st.next, rows));
  st.next = next[0];
  st.length = end;
  return A;
}

}  // namespace eformer::attention
