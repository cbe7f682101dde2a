// Sinkhorn attention's softmax for the common case (kernels/sinkhorn.h, sorted_block_attention): query
// block r attends exactly 2 b keys, its sorted block and its own block, so one work item per
// (batch, head, block) computes the scores [b, 2 b], an exact softmax over them and the output. Where a
// gradient will be needed the probabilities are kept ([B H n, b, wp] floats: N 2 b per head, as many as
// the keys [2 N, d] where b = d): the backward then starts from them, skipping the scores' GEMM, the
// exponentials and the keys' transpose, and writes the gradients of block r's keys and values, which no
// other query block reads.
// The products are the register-blocked tile GEMMs (tile_gemm.h) on the calling thread: an item's
// GEMMs are [b, d] x [d, 2 b] and smaller, where a oneDNN call costs about as much in dispatch,
// packing and signal masking as in arithmetic. The item's two key (value) blocks are copied
// transposed side by side into scratch (by 16 x 16 register tiles where b and d allow, transpose16.h),
// [d, wp] with wp = 2 b rounded up to whole vectors, so that the scores (and dP) are one GEMM each.
#include <algorithm>
#include <limits>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/attention/kernels/transpose16.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"

namespace eformer::kernels {
namespace {

struct AttendSizes {
  int64_t BH = 0, N = 0, n = 0, b = 0, d = 0;
  int64_t wp = 0;  // the score rows' stride: 2 b rounded up to whole vectors
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

// C[M, N] (+)= alpha A B with A(m, k) = A[m a_rs + k a_cs] (one of the strides 1) and B [K, N] row-major:
// the tile GEMM where N is whole vectors (always wp; d when a multiple of the vector width), oneDNN
// otherwise.
void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  if (N % tile::kWidth == 0) return tile::gemm(M, N, K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
  const bool trans_a = a_cs != 1;
  blas::sgemm(trans_a, false, M, N, K, alpha, A, trans_a ? a_cs : a_rs, B, ldb, accumulate ? 1.f : 0.f, C,
              ldc);
}

// xt [d, wp] = [x sorted block; x local block]^T, columns 2 b.. wp zero.
void transposed_pair(const float* x, const BlockRows& at, float* xt, const AttendSizes& s) {
  const int64_t b = s.b, d = s.d, wp = s.wp;
  const float *sorted = x + at.sorted, *local = x + at.local;
  if (kTranspose16 && b % 16 == 0 && d % 16 == 0 && wp == 2 * b) {  // by 16 x 16 tiles in registers
    for (int64_t t = 0; t < b; t += 16)
      for (int64_t c = 0; c < d; c += 16) {
        transpose16(sorted + t * d + c, d, xt + c * wp + t, wp);
        transpose16(local + t * d + c, d, xt + c * wp + b + t, wp);
      }
    return;
  }
  for (int64_t c = 0; c < d; ++c) {  // the 2 b rows stay in L1; the writes are contiguous
    float* out = xt + c * wp;
    for (int64_t t = 0; t < b; ++t) out[t] = sorted[t * d + c];
    for (int64_t t = 0; t < b; ++t) out[b + t] = local[t * d + c];
    std::fill(out + 2 * b, out + wp, 0.f);
  }
}

// Scores [b, wp] = scale q [sorted; local]^T (kt: the keys transposed_pair wrote), -inf where not
// attended (causal: the local block's later keys, and block 0's sorted block, which mixes no earlier
// block); columns 2 b.. wp are never read.
void block_scores(const float* q, const float* kt, const BlockRows& at, int64_t r, float* sc,
                  const AttendSizes& s) {
  const int64_t b = s.b, wp = s.wp;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  small_gemm(b, wp, s.d, q + at.q, s.d, 1, kt, wp, sc, wp, s.scale, false);
  if (!s.causal) return;
  for (int64_t i = 0; i < b; ++i) {
    if (r == 0) std::fill(sc + i * wp, sc + i * wp + b, kNegInf);
    std::fill(sc + i * wp + b + i + 1, sc + i * wp + 2 * b, kNegInf);
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
  const int64_t wp = tile::round_up(2 * b);
  const AttendSizes s{B * H, N, n, b, d, wp, scale, causal};
  const Tensor qc = q.contiguous_data(), kc = keys.contiguous_data(), vc = values.contiguous_data();
  const bool keep =
      autograd::is_grad_enabled() && (requires_grad(q) || requires_grad(keys) || requires_grad(values));
  Tensor out = Tensor::empty(q.shape()), probs = keep ? Tensor::empty({B * H * n, b, wp}) : Tensor();
  for_each_item(s.BH * n, b * wp + d * wp, [&](int64_t item, float* scratch) {
    const int64_t bh = item / n, r = item % n;
    const BlockRows at = rows_of(bh, r, s);
    float *sc = keep ? probs.data<float>() + item * b * wp : scratch, *kt = scratch + b * wp;
    transposed_pair(kc.data<float>(), at, kt, s);
    block_scores(qc.data<float>(), kt, at, r, sc, s);
    for (int64_t i = 0; i < b; ++i) {  // exact softmax over the row's 2 b keys (at least its own key)
      float* row = sc + i * wp;
      const float m = attention::OnlineSoftmax::max_of(row, 2 * b);
      const float sum = attention::OnlineSoftmax::exp_in_place(row, 2 * b, m);  // -inf (not attended): 0
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < 2 * b; ++j) row[j] *= inv;
    }
    const float* v = vc.data<float>();
    float* o = out.data<float>() + at.q;
    small_gemm(b, d, b, sc, wp, 1, v + at.sorted, d, o, d, 1.f, false);
    small_gemm(b, d, b, sc + b, wp, 1, v + at.local, d, o, d, 1.f, true);
  });
  const Tensor od = out.detach();
  return autograd::record(op, out, {q, keys, values}, [qc, kc, vc, od, probs, s](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    const int64_t b = s.b, d = s.d, wp = s.wp;
    Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
    const float *q = qc.data<float>(), *k = kc.data<float>(), *v = vc.data<float>(), *go = gc.data<float>();
    for_each_item(s.BH * s.n, b * wp + b + d * wp, [&](int64_t item, float* scratch) {
      const int64_t bh = item / s.n;
      const BlockRows at = rows_of(bh, item % s.n, s);
      const float* p = probs.data<float>() + item * b * wp;
      float *dp = scratch, *delta = dp + b * wp, *xt = delta + b;
      const float* gor = go + at.q;
      const float* o = od.data<float>() + at.q;
      for (int64_t i = 0; i < b; ++i) {
        float dot = 0;  // D_i = dO_i . O_i = sum_j P_ij dP_ij
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < d; ++c) dot += gor[i * d + c] * o[i * d + c];
        delta[i] = dot;
      }
      // dV = P^T dO (per block of keys); dP = dO V^T; dS = P (dP - D); dQ = scale dS K; dK = scale dS^T Q.
      small_gemm(b, d, b, p, 1, wp, gor, d, dv.data<float>() + at.sorted, d, 1.f, false);
      small_gemm(b, d, b, p + b, 1, wp, gor, d, dv.data<float>() + at.local, d, 1.f, false);
      transposed_pair(v, at, xt, s);
      small_gemm(b, wp, d, gor, d, 1, xt, wp, dp, wp, 1.f, false);
      for (int64_t i = 0; i < b; ++i)
#pragma omp simd
        for (int64_t j = 0; j < 2 * b; ++j) dp[i * wp + j] = p[i * wp + j] * (dp[i * wp + j] - delta[i]);
      small_gemm(b, d, b, dp, wp, 1, k + at.sorted, d, dq.data<float>() + at.q, d, s.scale, false);
      small_gemm(b, d, b, dp + b, wp, 1, k + at.local, d, dq.data<float>() + at.q, d, s.scale, true);
      small_gemm(b, d, b, dp, 1, wp, q + at.q, d, dk.data<float>() + at.sorted, d, s.scale, false);
      small_gemm(b, d, b, dp + b, 1, wp, q + at.q, d, dk.data<float>() + at.local, d, s.scale, false);
    });
    return std::vector<Tensor>{dq, dk, dv};
  });
}

}  // namespace eformer::kernels
