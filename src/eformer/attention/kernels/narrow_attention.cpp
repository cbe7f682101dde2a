#include "eformer/attention/kernels/narrow_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_dropout.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

// About 64K floats (256 KiB, L2) of scores per chunk: 256 query rows at M = 256 keys.
constexpr int64_t kChunkFloats = 65536;
// Chunks per work item of the backward (a group of rows, whose dK, dV sums are its own): a fixed number,
// so the grouping, and the bits, do not depend on the thread count.
constexpr int64_t kChunksPerGroup = 8;

int64_t rows_per_chunk(int64_t N, int64_t M) {
  return std::clamp<int64_t>(kChunkFloats / std::max<int64_t>(M, 1), 32, std::max<int64_t>(N, 1));
}
int64_t chunks(int64_t n, int64_t per) { return (n + per - 1) / per; }

// The row loops below keep 16 independent lanes so that they vectorize (a plain max or sum over
// floats does not: the compiler may not reorder it).
constexpr int kLanes = 16;

// max over s[0, n), NaN skipped (x > m is false for a NaN x); -inf when n = 0.
float row_max(const float* s, int64_t n) {
  float lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = s[j + l] > lane[l] ? s[j + l] : lane[l];
  float m = -std::numeric_limits<float>::infinity();
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  for (int l = 0; l < kLanes; ++l) m = lane[l] > m ? lane[l] : m;
  return m;
}

// s = exp(s - m) in place over [0, n); returns the sum (NaN if some s is NaN).
float exp_and_sum(float* s, int64_t n, float m) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += s[j + l] = fast_exp(s[j + l] - m);
  float sum = 0.0f;
  for (; j < n; ++j) sum += s[j] = fast_exp(s[j] - m);
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  return sum;
}

// sum_j a[j] b[j] over [0, n).
float dot(const float* a, const float* b, int64_t n) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += a[j + l] * b[j + l];
  float sum = 0.0f;
  for (; j < n; ++j) sum += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  return sum;
}

// s [rows, M] (rows i0 .. of one head) -> softmax over the keys the rules allow, in place; 0 at the
// others and on a row with none; NaN on a row with a NaN score (as softmax).
void softmax_rows(float* s, int64_t rows, int64_t i0, int64_t N, int64_t M, const bool* km, bool causal) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * M;
    // Keys [0, end) pass the causal rule (j <= i + M - N); the key mask removes some of them.
    const int64_t end = causal ? std::clamp<int64_t>(i0 + r + (M - N) + 1, 0, M) : M;
    std::fill(sr + end, sr + M, kNegInf);
    if (km)
      for (int64_t j = 0; j < end; ++j) sr[j] = km[j] ? sr[j] : kNegInf;
    const float m = row_max(sr, end);
    if (m == kNegInf) {  // nothing attendable (or only NaN scores): 0, or NaN as softmax gives
      const bool nan = std::any_of(sr, sr + end, [](float x) { return std::isnan(x); });
      std::fill(sr, sr + M, nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
      continue;
    }
    const float inv = 1.0f / exp_and_sum(sr, M, m);  // exp(-inf) = 0 at the masked keys; sum >= 1
    for (int64_t j = 0; j < M; ++j) sr[j] *= inv;
  }
}

}  // namespace

void narrow_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask, float* p,
                              float* out, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                              bool causal, const FlashDropout* dropout) {
  const bool drop = dropout && dropout->p > 0.0f;
  const int64_t rows = rows_per_chunk(N, M), per_head = chunks(N, rows);
  for_each_item(B * H * per_head, drop ? rows * M : 0, [&](int64_t item, float* scratch) {
    const int64_t bh = item / per_head, i0 = (item % per_head) * rows, n = std::min(rows, N - i0);
    const float* kh = k + bh * M * d;
    const float* vh = v + bh * M * d;
    float* s = p + (bh * N + i0) * M;
    // S = scale q k^T, then P = softmax(S) in place while the chunk is in cache, then O = (P o Z) v.
    blas::sgemm(false, true, n, M, d, scale, q + (bh * N + i0) * d, d, kh, d, 0.0f, s, M);
    softmax_rows(s, n, i0, N, M, key_mask ? key_mask + (bh / H) * M : nullptr, causal);
    const float* pv = s;
    if (drop) {
      std::memcpy(scratch, s, size_t(n * M) * sizeof(float));
      apply_dropout(scratch, M, n, M, (bh * N + i0) * M, M, *dropout);
      pv = scratch;
    }
    blas::sgemm(false, false, n, d, M, 1.0f, pv, M, vh, d, 0.0f, out + (bh * N + i0) * d, d);
  });
}

void narrow_attention_backward(const float* q, const float* k, const float* v, const float* p,
                               const float* dout, float* dq, float* dk, float* dv, int64_t B, int64_t H,
                               int64_t N, int64_t M, int64_t d, float scale, const FlashDropout* dropout) {
  const bool drop = dropout && dropout->p > 0.0f;
  const int64_t rows = rows_per_chunk(N, M), group = rows * kChunksPerGroup, groups = chunks(N, group);
  const int64_t BH = B * H, Md = M * d;
  // Each group's dK, dV [BH, groups, M, d] when a head has several groups (one group writes dk, dv).
  ScratchBuffer partial(groups > 1 ? 2 * BH * groups * Md : 0);
  for_each_item(BH * groups, rows * M * (drop ? 2 : 1), [&](int64_t item, float* scratch) {
    const int64_t bh = item / groups, g0 = (item % groups) * group, g1 = std::min(N, g0 + group);
    const int64_t slot = groups > 1 ? item : -1;
    float* dkg = slot >= 0 ? partial.data + slot * Md : dk ? dk + bh * Md : nullptr;
    float* dvg = slot >= 0 ? partial.data + (BH * groups + slot) * Md : dv ? dv + bh * Md : nullptr;
    float* ds = scratch;                              // dS of the chunk [n, M]
    float* pz = drop ? scratch + rows * M : nullptr;  // P o Z of the chunk
    for (int64_t i0 = g0; i0 < g1; i0 += rows) {
      const int64_t n = std::min(rows, g1 - i0), e0 = (bh * N + i0) * M;
      const float beta = i0 == g0 ? 0.0f : 1.0f;  // the group's first chunk starts its sums
      const float* pc = p + e0;
      const float* doc = dout + (bh * N + i0) * d;
      if (dv) {  // dV += (P o Z)^T dO
        const float* pzc = pc;
        if (drop) {
          std::memcpy(pz, pc, size_t(n * M) * sizeof(float));
          apply_dropout(pz, M, n, M, e0, M, *dropout);
          pzc = pz;
        }
        blas::sgemm(true, false, M, d, n, 1.0f, pzc, M, doc, d, beta, dvg, d);
      }
      if (!dq && !dk) continue;
      blas::sgemm(false, true, n, M, d, 1.0f, doc, d, v + bh * Md, d, 0.0f, ds, M);  // dP = dO v^T
      if (drop) apply_dropout(ds, M, n, M, e0, M, *dropout);                         // dP o Z
      for (int64_t r = 0; r < n; ++r) {
        float* dr = ds + r * M;
        const float* pr = pc + r * M;
        const float D = dot(pr, dr, M);  // rowsum(P o dP o Z) = rowsum(dO o O)
        for (int64_t j = 0; j < M; ++j) dr[j] = pr[j] * (dr[j] - D);
      }
      if (dq)
        blas::sgemm(false, false, n, d, M, scale, ds, M, k + bh * Md, d, 0.0f, dq + (bh * N + i0) * d, d);
      if (dk) blas::sgemm(true, false, M, d, n, scale, ds, M, q + (bh * N + i0) * d, d, beta, dkg, d);
    }
  });
  if (groups == 1) return;
  // dK, dV = the groups' sums, added in group order.
  parallel::parallel_for(BH, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t bh = h0; bh < h1; ++bh)
      for (int which = 0; which < 2; ++which) {
        float* out = which == 0 ? dk : dv;
        if (!out) continue;
        const float* part = partial.data + (which * BH * groups + bh * groups) * Md;
        std::copy(part, part + Md, out + bh * Md);
        for (int64_t g = 1; g < groups; ++g)
          for (int64_t e = 0; e < Md; ++e) out[bh * Md + e] += part[g * Md + e];
      }
  });
}

}  // namespace eformer::kernels

namespace eformer::attention {

Tensor narrow_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  const AttentionDims s = validate_attention("narrow_attention", q, k, v, opts);
  if (std::min(s.N, s.M) > kNarrowSideMax) return flash_attention(q, k, v, opts);
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.d});
  Tensor p = Tensor::empty({s.B, s.H, s.N, s.M});
  // The mask of flash_attention and ops/dropout.h on the same [B, H, N, M] probabilities.
  const kernels::FlashDropout dr = kernels::reserve_dropout(opts.dropout, s.B * s.H * s.N * s.M);
  if (out.numel() > 0) {
    if (s.M == 0)
      std::fill(out.data<float>(), out.data<float>() + out.numel(), 0.0f);  // no key: every row is 0
    else
      kernels::narrow_attention_forward(
          qc.data<float>(), kc.data<float>(), vc.data<float>(), km.defined() ? km.data<bool>() : nullptr,
          p.data<float>(), out.data<float>(), s.B, s.H, s.N, s.M, s.d, s.scale, opts.causal, &dr);
  }
  const bool need_q = requires_grad(q), need_k = requires_grad(k), need_v = requires_grad(v);
  return autograd::record(
      "narrow_attention", out, {q, k, v}, [qc, kc, vc, p, s, dr, need_q, need_k, need_v](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        // Every element is written by a GEMM unless a side is empty (then the gradients are 0).
        const bool empty = p.numel() == 0 || s.d == 0;
        auto grad_like = [empty](bool need, const Tensor& t) {
          return !need ? Tensor() : empty ? Tensor::zeros(t.shape()) : Tensor::empty(t.shape());
        };
        Tensor dq = grad_like(need_q, qc), dk = grad_like(need_k, kc), dv = grad_like(need_v, vc);
        if (!empty) {
          auto data = [](Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
          kernels::narrow_attention_backward(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                             p.data<float>(), gc.data<float>(), data(dq), data(dk), data(dv),
                                             s.B, s.H, s.N, s.M, s.d, s.scale, &dr);
        }
        return std::vector<Tensor>{dq, dk, dv};
      });
}

}  // namespace eformer::attention
