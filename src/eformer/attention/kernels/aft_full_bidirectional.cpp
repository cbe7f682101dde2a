// Bidirectional AFT-full by GEMMs (kernels/aft.h, aft_full_bidirectional). Every query sees every key, so one
// reference per column, b_c = max_t' K_t',c, and one per row, a_t = max_t' w_t,t', serve all pairs (eq. 2):
//     [num | den]_t = sum_t' E_t,t' X_t',   E = exp(w - a),   X = [exp(K - b) (.) V | exp(K - b)]
//     A = num / den,   L_t = a_t + b + log den
// with the columns of a head the B d channels of its batch side by side (X [M, 2 B d]): E is shared by them
// (and, with one bias head, by every head: the caller folds the heads into the batch), so each panel of
// kPanel rows of E is one [kPanel, M] x [M, 2 B d] GEMM by fixed tiles (tile_sgemm). E is not kept between
// the passes: the backward remakes it (N M exponentials against 4 N M B d flops per GEMM), so the memory is
// O(kPanel M + M B d) whatever N. k, v, the output and the gradients are read and written in their own
// [B, H, ., d] layout (no column-layout copies); only X, the panel and the log-normalizer L [N, B d] are
// ours.
//
// Backward, with the weights P_t,t' = exp(w + K - L), r = dA, u = dA (.) A and [G | -H] = [r | -u] exp(a + b
// - L) (the factor left out of E and X):
//     Q = E^T [G | -H]  [M, 2 B d]:   dV = e (.) Q_G,   dK = V (.) dV + e (.) Q_H   (e = exp(K - b))
//     dw = E (.) ([G | -H] X^T)       (only where w needs a gradient: a third of the backward's flops)
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "eformer/attention/kernels/aft.h"
#include "eformer/attention/kernels/aft_pairs.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

constexpr int64_t kPanel = 512;

// Head h of tensors [B, H, rows, d] (contiguous): row t of batch b starts at row(x, b, t).
struct BidirHead {
  const float *k, *v, *w;  // k, v [B, H, M, d]; w this head's rows [N, ldw]
  int64_t B, H, h, N, M, d, ldw;
  int64_t BD() const { return B * d; }
  int64_t at(int64_t b, int64_t t, int64_t rows) const { return ((b * H + h) * rows + t) * d; }
};

// One head's references: b [B d] the column maxima of K, a [N] the row maxima of w, and the largest range of
// K (per column) plus that of w (per row): every factor of the GEMMs is at least exp(-range).
struct BidirRefs {
  std::vector<float> a, b;
  float range = 0.f;
};
BidirRefs bidirectional_refs(const BidirHead& h) {
  const int64_t N = h.N, M = h.M, d = h.d;
  BidirRefs refs;
  refs.a.resize(size_t(N)), refs.b.assign(size_t(h.BD()), -kInf);
  std::vector<float> lo(size_t(h.BD()), kInf), rw(static_cast<size_t>(N));
  for (int64_t b = 0; b < h.B; ++b)
    for (int64_t j = 0; j < M; ++j) {
      const float* kj = h.k + h.at(b, j, M);
      float *hi = refs.b.data() + b * d, *lw = lo.data() + b * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) hi[c] = std::max(hi[c], kj[c]), lw[c] = std::min(lw[c], kj[c]);
    }
  parallel::parallel_for(N, 16, [&](int64_t from, int64_t to) {
    for (int64_t t = from; t < to; ++t) {
      const float* wr = h.w + t * h.ldw;
      float mn = kInf, mx = -kInf;
#pragma omp simd reduction(min : mn) reduction(max : mx)
      for (int64_t j = 0; j < M; ++j) mn = std::min(mn, wr[j]), mx = std::max(mx, wr[j]);
      refs.a[size_t(t)] = mx, rw[size_t(t)] = mx - mn;
    }
  });
  for (int64_t c = 0; c < h.BD(); ++c) refs.range = std::max(refs.range, refs.b[size_t(c)] - lo[size_t(c)]);
  refs.range += N > 0 ? *std::max_element(rw.begin(), rw.end()) : 0.f;
  return refs;
}

// X [M, 2 B d] = [exp(K - b) (.) V | exp(K - b)].
void bidirectional_operands(const BidirHead& h, const float* ref, float* X) {
  const int64_t BD = h.BD(), d = h.d;
  parallel::parallel_for(h.M, 16, [&](int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
      for (int64_t b = 0; b < h.B; ++b) {
        const float *kj = h.k + h.at(b, j, h.M), *vj = h.v + h.at(b, j, h.M), *rb = ref + b * d;
        float *xv = X + j * 2 * BD + b * d, *xe = xv + BD;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) {
          const float e = fast_exp(kj[c] - rb[c]);
          xv[c] = e * vj[c], xe[c] = e;
        }
      }
  });
}

// E [i1 - i0, M] = exp(w_t,t' - a_t) for the rows [i0, i1).
void bias_panel(const BidirHead& h, const float* a, int64_t i0, int64_t i1, float* E) {
  const int64_t M = h.M;
  parallel::parallel_for(i1 - i0, 8, [&](int64_t from, int64_t to) {
    for (int64_t r = from; r < to; ++r) {
      const float *wr = h.w + (i0 + r) * h.ldw, m = a[i0 + r];
      float* er = E + r * M;
#pragma omp simd
      for (int64_t j = 0; j < M; ++j) er[j] = fast_exp(wr[j] - m);
    }
  });
}

// Forward of one head: A [B, H, N, d] (this head's rows written), L [N, B d].
void full_bidirectional_forward(const BidirHead& h, const BidirRefs& refs, float* A, float* L) {
  const int64_t N = h.N, M = h.M, BD = h.BD(), d = h.d, rows = std::max<int64_t>(1, std::min(N, kPanel));
  const float *a = refs.a.data(), *ref = refs.b.data();
  ScratchBuffer X(M * 2 * BD), E(rows * M), P(rows * 2 * BD);
  bidirectional_operands(h, ref, X.data);
  for (int64_t i0 = 0; i0 < N; i0 += rows) {
    const int64_t i1 = std::min(N, i0 + rows), C = i1 - i0;
    bias_panel(h, a, i0, i1, E.data);
    tile_sgemm(false, false, C, 2 * BD, M, E.data, M, X.data, 2 * BD, 0.f, P.data, 2 * BD);
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      for (int64_t r = from; r < to; ++r) {
        const int64_t t = i0 + r;
        for (int64_t b = 0; b < h.B; ++b) {
          const float *num = P.data + r * 2 * BD + b * d, *den = num + BD, *rb = ref + b * d;
          float *At = A + h.at(b, t, N), *Lt = L + t * BD + b * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) At[c] = num[c] / den[c], Lt[c] = a[t] + rb[c] + fast_log(den[c]);
        }
      }
    });
  }
}

// Backward of one head: A, G [B, H, N, d], L [N, B d] -> dK, dV [B, H, M, d] (this head's rows) and dw rows
// [N, ldw] (null: w needs no gradient).
void full_bidirectional_backward(const BidirHead& h, const BidirRefs& refs, const float* A, const float* L,
                                 const float* G, float* dK, float* dV, float* dw) {
  const int64_t N = h.N, M = h.M, BD = h.BD(), d = h.d, rows = std::max<int64_t>(1, std::min(N, kPanel));
  const float *a = refs.a.data(), *ref = refs.b.data();
  // X is an operand of the dw GEMM only; without it the last loop remakes e = exp(K - b) (M B d
  // exponentials).
  ScratchBuffer X(dw ? M * 2 * BD : 0), E(rows * M), GH(rows * 2 * BD), Q(M * 2 * BD);
  if (dw) bidirectional_operands(h, ref, X.data);
  if (N == 0) std::fill(Q.data, Q.data + M * 2 * BD, 0.f);
  for (int64_t i0 = 0; i0 < N; i0 += rows) {
    const int64_t i1 = std::min(N, i0 + rows), C = i1 - i0;
    bias_panel(h, a, i0, i1, E.data);
    parallel::parallel_for(C, 4, [&](int64_t from, int64_t to) {
      for (int64_t r = from; r < to; ++r) {
        const int64_t t = i0 + r;
        for (int64_t b = 0; b < h.B; ++b) {
          const float *Gt = G + h.at(b, t, N), *At = A + h.at(b, t, N), *Lt = L + t * BD + b * d,
                      *rb = ref + b * d;
          float *gr = GH.data + r * 2 * BD + b * d, *hr = gr + BD;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) {
            const float f = fast_exp(a[t] + rb[c] - Lt[c]);
            gr[c] = Gt[c] * f, hr[c] = -Gt[c] * At[c] * f;
          }
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
      for (int64_t b = 0; b < h.B; ++b) {
        const float *qg = Q.data + j * 2 * BD + b * d, *qh = qg + BD, *rb = ref + b * d;
        const float *kj = h.k + h.at(b, j, M), *vj = h.v + h.at(b, j, M);
        float *dvj = dV + h.at(b, j, M), *dkj = dK + h.at(b, j, M);
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) {
          const float e = fast_exp(kj[c] - rb[c]), vg = e * qg[c];
          dvj[c] = vg, dkj[c] = vj[c] * vg + e * qh[c];
        }
      }
  });
}

}  // namespace
}  // namespace eformer::kernels

namespace eformer::attention {

Tensor aft_full_bidirectional(const Tensor& k, const Tensor& v, const Tensor& w, int64_t N, const char* op) {
  EF_CHECK(k.defined() && v.defined() && k.dim() == 4 && v.shape() == k.shape() &&
               k.dtype() == DType::Float32 && v.dtype() == DType::Float32 && k.size(2) >= 1,
           ShapeError, op, ": k and v must be float32 [batch, heads, keys >= 1, dim] of one shape; got ",
           k.defined() ? k.describe() : "undefined", " and ", v.defined() ? v.describe() : "undefined");
  const int64_t B = k.size(0), H = k.size(1), M = k.size(2), d = k.size(3);
  EF_CHECK(N >= 0 && w.defined() && w.dtype() == DType::Float32 && w.dim() == 3 && w.size(0) == H &&
               w.size(1) >= N && w.size(2) >= M,
           ShapeError, op, ": w is ", w.defined() ? w.describe() : "undefined", "; expected [", H, ", >= ", N,
           ", >= ", M, "]");
  Tensor kc = k.contiguous_data(), vc = v.contiguous_data(), wc = w.contiguous_data();
  const int64_t R = wc.size(1), ldw = wc.size(2);
  const auto head = [=](int64_t h) {
    return kernels::BidirHead{
        kc.data<float>(), vc.data<float>(), wc.data<float>() + h * R * ldw, B, H, h, N, M, d, ldw};
  };
  auto refs = std::make_shared<std::vector<kernels::BidirRefs>>();  // per head, kept for the backward
  for (int64_t h = 0; h < H; ++h) {
    refs->push_back(kernels::bidirectional_refs(head(h)));
    if (refs->back().range >= kernels::kRange) {  // too wide for the GEMM's factors: exact pairs
      AftLayout L;
      L.kind = AftBias::Dense;
      return aft_average(k, v, w, L, N, {}, op);
    }
  }
  Tensor A = Tensor::empty({B, H, N, d});
  std::vector<Tensor> Ls;  // the log-normalizers [N, B d] per head, kept for the backward
  for (int64_t h = 0; h < H; ++h) {
    Ls.push_back(Tensor::empty({N, B * d}));
    kernels::full_bidirectional_forward(head(h), (*refs)[size_t(h)], A.data<float>(),
                                        Ls.back().data<float>());
  }
  Tensor Ad = A.detach();
  const bool need_w = requires_grad(w);
  return autograd::record("aft_full_bidirectional", A, {k, v, w},
                          [kc, vc, wc, Ad, Ls, refs, head, need_w](const Tensor& g) {
                            Tensor gc = g.contiguous_data();
                            Tensor dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
                            // dw: every head's [N, M] corner is written, so zeros only where w is larger.
                            const int64_t N = Ad.size(2), M = kc.size(2);
                            Tensor dw = !need_w                              ? Tensor()
                                        : wc.size(1) == N && wc.size(2) == M ? Tensor::empty(wc.shape())
                                                                             : Tensor::zeros(wc.shape());
                            for (int64_t h = 0; h < kc.size(1); ++h)
                              kernels::full_bidirectional_backward(
                                  head(h), (*refs)[size_t(h)], Ad.data<float>(), Ls[size_t(h)].data<float>(),
                                  gc.data<float>(), dk.data<float>(), dv.data<float>(),
                                  need_w ? dw.data<float>() + h * wc.size(1) * wc.size(2) : nullptr);
                            return std::vector<Tensor>{dk, dv, dw};
                          });
}

}  // namespace eformer::attention
