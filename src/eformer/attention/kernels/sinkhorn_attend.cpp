// Sinkhorn attention's softmax for the common case (kernels/sinkhorn.h, sorted_block_attention): query
// block r attends exactly 2 b keys, its sorted block and its own block, so one work item per
// (batch, head, block) computes the scores [b, 2 b] with two small GEMMs, an exact softmax over them
// and the output; the backward recomputes the scores from the saved log-sum-exps (flash-style) and
// writes the gradients of block r's keys and values, which no other query block reads.
#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

struct AttendSizes {
  int64_t BH = 0, N = 0, n = 0, b = 0, d = 0;
  float scale = 1;
  bool causal = false;
};

// Row pointers of item (bh, r): its queries (or output rows) and the two key (value) blocks.
struct BlockRows {
  int64_t q = 0, sorted = 0, local = 0;  // float offsets
};
BlockRows rows_of(int64_t bh, int64_t r, const AttendSizes& s) {
  const int64_t S = s.n * s.b, base = bh * (S + s.N) * s.d;
  return {(bh * s.N + r * s.b) * s.d, base + r * s.b * s.d, base + (S + r * s.b) * s.d};
}

// Scores [b, 2 b] = scale q [sorted; local]^T, -inf where not attended (causal: the local block's later
// keys, and block 0's sorted block, which mixes no earlier block).
void block_scores(const float* q, const float* k, const BlockRows& at, int64_t r, float* sc,
                  const AttendSizes& s) {
  const int64_t b = s.b, d = s.d, w = 2 * b;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  blas::sgemm(false, true, b, b, d, s.scale, q + at.q, d, k + at.sorted, d, 0.f, sc, w);
  blas::sgemm(false, true, b, b, d, s.scale, q + at.q, d, k + at.local, d, 0.f, sc + b, w);
  if (!s.causal) return;
  for (int64_t i = 0; i < b; ++i) {
    if (r == 0) std::fill(sc + i * w, sc + i * w + b, kNegInf);
    std::fill(sc + i * w + b + i + 1, sc + (i + 1) * w, kNegInf);
  }
}

}  // namespace

Tensor sorted_block_attention(const Tensor& q, const Tensor& keys, const Tensor& values, int64_t b,
                              float scale, bool causal) {
  const char* op = "sorted_block_attention";
  EF_CHECK(q.dim() == 4 && b > 0 && q.size(2) % b == 0, ShapeError, op, ": q ", q.describe(),
           " must be [B, H, N, d] with N a multiple of the block ", b);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), n = N / b;
  const Shape kv{B, H, 2 * N, d};
  EF_CHECK(keys.shape() == kv && values.shape() == kv, ShapeError, op, ": keys ", keys.describe(),
           ", values ", values.describe(), "; expected [", B, ", ", H, ", ", 2 * N, ", ", d,
           "] (sorted blocks, then the local keys)");
  const AttendSizes s{B * H, N, n, b, d, scale, causal};
  const Tensor qc = q.contiguous_data(), kc = keys.contiguous_data(), vc = values.contiguous_data();
  Tensor out = Tensor::empty(q.shape()), lse = Tensor::empty({B, H, N});
  const int64_t w = 2 * b;
  for_each_item(s.BH * n, b * w, [&](int64_t item, float* sc) {
    const int64_t bh = item / n, r = item % n;
    const BlockRows at = rows_of(bh, r, s);
    block_scores(qc.data<float>(), kc.data<float>(), at, r, sc, s);
    float* l = lse.data<float>() + bh * N + r * b;
    for (int64_t i = 0; i < b; ++i) {  // exact softmax over the row's 2 b keys (at least its own key)
      float* row = sc + i * w;
      const float m = attention::OnlineSoftmax::max_of(row, w);
      const float sum = attention::OnlineSoftmax::exp_in_place(row, w, m);  // -inf (not attended): 0
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < w; ++j) row[j] *= inv;
      l[i] = m + std::log(sum);
    }
    const float* v = vc.data<float>();
    float* o = out.data<float>() + at.q;
    blas::sgemm(false, false, b, d, b, 1.f, sc, w, v + at.sorted, d, 0.f, o, d);
    blas::sgemm(false, false, b, d, b, 1.f, sc + b, w, v + at.local, d, 1.f, o, d);
  });
  const Tensor od = out.detach();
  return autograd::record(op, out, {q, keys, values}, [qc, kc, vc, od, lse, s](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    const int64_t b = s.b, d = s.d, w = 2 * b;
    Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
    const float *q = qc.data<float>(), *k = kc.data<float>(), *v = vc.data<float>(), *go = gc.data<float>();
    for_each_item(s.BH * s.n, 2 * b * w + b, [&](int64_t item, float* scratch) {
      const int64_t bh = item / s.n, r = item % s.n;
      const BlockRows at = rows_of(bh, r, s);
      float *p = scratch, *dp = scratch + b * w, *delta = dp + b * w;
      block_scores(q, k, at, r, p, s);
      const float* l = lse.data<float>() + bh * s.N + r * b;
      const float* gor = go + at.q;
      const float* o = od.data<float>() + at.q;
      for (int64_t i = 0; i < b; ++i) {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) p[i * w + j] = fast_exp(p[i * w + j] - l[i]);
        float dot = 0;  // D_i = dO_i . O_i = sum_j P_ij dP_ij
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < d; ++c) dot += gor[i * d + c] * o[i * d + c];
        delta[i] = dot;
      }
      // dV = P^T dO (per block of keys); dP = dO V^T; dS = P (dP - D); dQ = scale dS K; dK = scale dS^T Q.
      blas::sgemm(true, false, b, d, b, 1.f, p, w, gor, d, 0.f, dv.data<float>() + at.sorted, d);
      blas::sgemm(true, false, b, d, b, 1.f, p + b, w, gor, d, 0.f, dv.data<float>() + at.local, d);
      blas::sgemm(false, true, b, b, d, 1.f, gor, d, v + at.sorted, d, 0.f, dp, w);
      blas::sgemm(false, true, b, b, d, 1.f, gor, d, v + at.local, d, 0.f, dp + b, w);
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < w; ++j) dp[i * w + j] = p[i * w + j] * (dp[i * w + j] - delta[i]);
      blas::sgemm(false, false, b, d, b, s.scale, dp, w, k + at.sorted, d, 0.f, dq.data<float>() + at.q, d);
      blas::sgemm(false, false, b, d, b, s.scale, dp + b, w, k + at.local, d, 1.f, dq.data<float>() + at.q,
                  d);
      blas::sgemm(true, false, b, d, b, s.scale, dp, w, q + at.q, d, 0.f, dk.data<float>() + at.sorted, d);
      blas::sgemm(true, false, b, d, b, s.scale, dp + b, w, q + at.q, d, 0.f, dk.data<float>() + at.local, d);
    });
    return std::vector<Tensor>{dq, dk, dv};
  });
}

}  // namespace eformer::kernels
