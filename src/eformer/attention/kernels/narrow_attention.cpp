#include "eformer/attention/kernels/narrow_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_dropout.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/rng.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

// About 64K floats (256 KiB, L2) of scores per work item: 256 query rows at M = 256 keys.
constexpr int64_t kChunkFloats = 65536;

int64_t rows_per_chunk(int64_t N, int64_t M) {
  return std::clamp<int64_t>(kChunkFloats / std::max<int64_t>(M, 1), 16, std::max<int64_t>(N, 1));
}
int64_t keys_per_chunk(int64_t N, int64_t M) {
  return std::clamp<int64_t>(kChunkFloats / std::max<int64_t>(N, 1), 128, std::max<int64_t>(M, 1));
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
                               const float* dout, float* ds, float* dq, float* dk, float* dv, int64_t B,
                               int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                               const FlashDropout* dropout) {
  const bool drop = dropout && dropout->p > 0.0f;
  // dS and dQ, by chunks of query rows.
  const int64_t rows = rows_per_chunk(N, M), row_chunks = chunks(N, rows);
  if (dq || dk)
    for_each_item(B * H * row_chunks, 0, [&](int64_t item, float*) {
      const int64_t bh = item / row_chunks, i0 = (item % row_chunks) * rows, n = std::min(rows, N - i0);
      float* dsc = ds + (bh * N + i0) * M;
      const float* pc = p + (bh * N + i0) * M;
      blas::sgemm(false, true, n, M, d, 1.0f, dout + (bh * N + i0) * d, d, v + bh * M * d, d, 0.0f, dsc, M);
      if (drop) apply_dropout(dsc, M, n, M, (bh * N + i0) * M, M, *dropout);  // dP o Z
      for (int64_t r = 0; r < n; ++r) {
        float* dr = dsc + r * M;
        const float* pr = pc + r * M;
        const float D = dot(pr, dr, M);  // rowsum(P o dP o Z) = rowsum(dO o O)
        for (int64_t j = 0; j < M; ++j) dr[j] = pr[j] * (dr[j] - D);
      }
      if (dq)
        blas::sgemm(false, false, n, d, M, scale, dsc, M, k + bh * M * d, d, 0.0f, dq + (bh * N + i0) * d, d);
    });
  // dK and dV, by chunks of keys: each sums over all N query rows in one GEMM.
  const int64_t keys = keys_per_chunk(N, M), key_chunks = chunks(M, keys);
  if (dk || dv)
    for_each_item(B * H * key_chunks, drop && dv ? N * keys : 0, [&](int64_t item, float* scratch) {
      const int64_t bh = item / key_chunks, j0 = (item % key_chunks) * keys, c = std::min(keys, M - j0);
      const float* qh = q + bh * N * d;
      const float* doh = dout + bh * N * d;
      if (dk)
        blas::sgemm(true, false, c, d, N, scale, ds + bh * N * M + j0, M, qh, d, 0.0f, dk + (bh * M + j0) * d,
                    d);
      if (!dv) return;
      const float* pz = p + bh * N * M + j0;
      int64_t ld = M;
      if (drop) {  // the columns [j0, j0 + c) of P o Z
        for (int64_t i = 0; i < N; ++i) std::memcpy(scratch + i * c, pz + i * M, size_t(c) * sizeof(float));
        apply_dropout(scratch, c, N, c, bh * N * M + j0, M, *dropout);
        pz = scratch, ld = c;
      }
      blas::sgemm(true, false, c, d, N, 1.0f, pz, ld, doh, d, 0.0f, dv + (bh * M + j0) * d, d);
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
  // Dropout reserves ceil(B H N M / 4) counters, as flash_attention and ops/dropout.h on the
  // [B, H, N, M] probabilities, so all three drop the same elements.
  kernels::FlashDropout dr;
  if (opts.dropout > 0.0f) {
    rng::Generator& gen = rng::default_generator();
    dr.p = opts.dropout;
    dr.counter = gen.reserve(uint64_t(s.B * s.H * s.N * s.M + 3) / 4);
    dr.seed = gen.state().seed, dr.stream = gen.state().stream;
  }
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
          Tensor ds = need_q || need_k ? Tensor::empty(p.shape()) : Tensor();
          auto data = [](Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
          kernels::narrow_attention_backward(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                             p.data<float>(), gc.data<float>(), data(ds), data(dq), data(dk),
                                             data(dv), s.B, s.H, s.N, s.M, s.d, s.scale, &dr);
        }
        return std::vector<Tensor>{dq, dk, dv};
      });
}

}  // namespace eformer::attention
