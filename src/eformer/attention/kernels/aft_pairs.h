// The pieces of AFT's weighted average (kernels/aft.h) shared by the pair-by-pair kernel (kernels/aft.cpp)
// and the banded GEMM kernel (kernels/aft_band.cpp): one (batch, head) and its window rule, running sums
// over keys and over queries, and the per-row forward and backward.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/aft.h"
#include "eformer/core/blas.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {

constexpr float kInf = std::numeric_limits<float>::infinity();
// The widest spread of exponents (a key's channels, or K plus w) the GEMM forms serve: their factors stay
// above exp(-60), far from float underflow; wider inputs are summed pair by pair.
constexpr float kRange = 60.0f;

// One (batch, head): keys and values [rows, d] starting at absolute key k0, the head's bias (null for
// None) read as w[t * a + t' + b] at absolute positions, and the window rule of aft.h.
struct AftHead {
  const float *k, *v, *w;
  const bool* km;  // key mask [M] (null: every key is real)
  int64_t k0, M, d, a, b, S, p;
  bool dense, causal;
  bool real(int64_t j) const { return !km || km[j]; }
  int64_t lo(int64_t t) const { return dense ? 0 : t - p; }
  int64_t hi(int64_t t) const {
    const int64_t h = dense ? M - 1 : t - p + S - 1;
    return causal ? std::min(h, t) : h;
  }
  int64_t first(int64_t t) const { return std::clamp<int64_t>(lo(t), 0, M); }     // window start
  int64_t last(int64_t t) const { return std::clamp<int64_t>(hi(t) + 1, 0, M); }  // window end (excl.)
  float bias(int64_t t, int64_t j) const { return w ? w[t * a + j + b] : 0.f; }
  const float* key(int64_t j) const { return k + (j - k0) * d; }
  const float* value(int64_t j) const { return v + (j - k0) * d; }
};

// A running sum over keys with bias 0: num = sum exp(K - mx) V, den = sum exp(K - mx), mx = max K.
struct Running {
  float *num, *den, *mx;
  void reset(int64_t d) {
    std::fill(num, num + d, 0.f), std::fill(den, den + d, 0.f), std::fill(mx, mx + d, -kInf);
  }
  // One exponential per channel: exp(-|K - mx|) rescales the sums (K above the maximum) or weighs K.
  void add(const float* kk, const float* vv, int64_t d) {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float x = kk[c] - mx[c], e = fast_exp(-std::fabs(x));
      const bool grows = x > 0.f;
      const float s = grows ? e : 1.f, f = grows ? 1.f : e;
      num[c] = num[c] * s + f * vv[c], den[c] = den[c] * s + f, mx[c] = grows ? kk[c] : mx[c];
    }
  }
};

// A reverse-accumulated sum over queries, per channel: sr = sum exp(ref - lse_t) r_t and su likewise
// with u_t, ref = min lse_t of the queries held (so every factor is <= 1).
struct QuerySums {
  float *sr, *su, *ref;
  void reset(int64_t d) {
    std::fill(sr, sr + d, 0.f), std::fill(su, su + d, 0.f), std::fill(ref, ref + d, kInf);
  }
  void add(const float* r, const float* A, const float* lse, int64_t d) {
    if (lse[0] == -kInf) return;  // a query with no real key has no gradient
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {  // one exponential, as Running::add
      const float x = ref[c] - lse[c], e = fast_exp(-std::fabs(x));
      const bool drops = x > 0.f;
      const float s = drops ? e : 1.f, f = drops ? 1.f : e;
      sr[c] = sr[c] * s + f * r[c], su[c] = su[c] * s + f * r[c] * A[c], ref[c] = drops ? lse[c] : ref[c];
    }
  }
  // Key j with bias 0 toward every held query: dv += exp(K - ref) sr, dk -= exp(K - ref) su.
  void apply(const float* kk, float* dv, float* dk, int64_t d) const {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const float e = fast_exp(kk[c] - ref[c]);
      dv[c] += e * sr[c], dk[c] -= e * su[c];
    }
  }
};

// log x for a normal positive float (the log-normalizers), vectorizable: x = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log(1 + f) by Cephes' minimax polynomial for logf, e ln 2 in two parts.
inline float fast_log(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  int32_t e = int32_t((bits >> 23) & 0xff) - 126;
  float m = std::bit_cast<float>((bits & 0x7fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool small = m < 0.70710678f;
  e -= small ? 1 : 0;
  const float f = (small ? m + m : m) - 1.f, z = f * f;
  float y = 7.0376836292e-2f;
  y = std::fma(y, f, -1.1514610310e-1f);
  y = std::fma(y, f, 1.1676998740e-1f);
  y = std::fma(y, f, -1.2420140846e-1f);
  y = std::fma(y, f, 1.4249322787e-1f);
  y = std::fma(y, f, -1.6668057665e-1f);
  y = std::fma(y, f, 2.0000714765e-1f);
  y = std::fma(y, f, -2.4999993993e-1f);
  y = std::fma(y, f, 3.3333331174e-1f);
  y = y * f * z + float(e) * -2.12194440e-4f - 0.5f * z;
  return f + y + float(e) * 0.693359375f;
}

// C [M, N] = op(A) op(B) + beta C (alpha 1) by fixed chunks of 128 columns of C, each chunk one GEMM run on a
// single thread inside our own parallel loop: a GEMM threaded by oneDNN may split its sums over K, and how
// depends on the thread count; this way every element is summed the same way on any thread count.
inline void column_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr int64_t kCols = 128;
  const int64_t chunks = (N + kCols - 1) / kCols;
#pragma omp parallel for num_threads(parallel::num_threads()) schedule(static, 1)
  for (int64_t cc = 0; cc < chunks; ++cc) {
    const int64_t n0 = cc * kCols, n = std::min(N, n0 + kCols) - n0;
    blas::sgemm(trans_a, trans_b, M, n, K, 1.f, A, lda, trans_b ? B + n0 * ldb : B + n0, ldb, beta, C + n0,
                ldc);
  }
}

// C [M, N] = op(A) op(B) + beta C (alpha 1) by fixed tiles of kRows x kCols, each one GEMM on a single
// thread: as column_sgemm, every element is summed the same way on any thread count, and tiles of rows as
// well as columns keep the threads busy with large GEMMs (one core: 256 x 512 tiles ran at 140-150 GFLOP/s,
// 128 x 128 at 115-121; bidirectional AFT-full by 128-row blocks of 128-column chunks was 0.52-0.59x torch).
inline void tile_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr int64_t kRows = 256, kCols = 512;
  const int64_t rows = (M + kRows - 1) / kRows, cols = (N + kCols - 1) / kCols;
#pragma omp parallel for num_threads(parallel::num_threads()) schedule(static, 1)
  for (int64_t i = 0; i < rows * cols; ++i) {
    const int64_t m0 = i / cols * kRows, n0 = i % cols * kCols;
    const int64_t m = std::min(M, m0 + kRows) - m0, n = std::min(N, n0 + kCols) - n0;
    blas::sgemm(trans_a, trans_b, m, n, K, 1.f, trans_a ? A + m0 : A + m0 * lda, lda,
                trans_b ? B + n0 * ldb : B + n0, ldb, beta, C + m0 * ldc + n0, ldc);
  }
}

// Query t's average from the prefix sums `pre`, the suffix sums `suf` (null: none) and its window, pair by
// pair: A [d], lse [d]; scratch [3 d].
void average_row(const AftHead& h, int64_t t, const Running& pre, const Running* suf, float* A, float* lse,
                 float* m, float* num, float* den);
void causal_sweep(const AftHead& h, int64_t t0, int64_t t1, int64_t& next, Running& pre, float* A, float* lse,
                  float* scratch);
void bidirectional_head(const AftHead& h, int64_t N, float* A, float* lse, float* sm, float* scratch);
// The suffix sums of every query (keys after its window), from a reverse pass: num, den, mx [N, d].
void suffix_sums(const AftHead& h, int64_t N, float* num, float* den, float* mx);
// Query t's window pairs into dk (without the V dv term) and dv: A_t, lse_t, g_t [d].
void window_row_backward(const AftHead& h, int64_t t, const float* A, const float* lse, const float* g,
                         float* dk, float* dv);
// The keys outside each query's window (bias 0) into dk (without V dv) and dv; scratch [3 d].
void outside_window_backward(const AftHead& h, int64_t N, const float* A, const float* lse, const float* g,
                             float* dk, float* dv, float* scratch);
void backward_head(const AftHead& h, int64_t N, const float* A, const float* lse, const float* g, float* dk,
                   float* dv, float* scratch);
// Adds query t's bias gradient from one (batch, head) to row[t' - first(t)] over its window.
void bias_row_add(const AftHead& h, int64_t t, const float* A, const float* lse, const float* g, float* row);
void bias_row(const AftHead* heads, int64_t B, int64_t H, int64_t hh, int64_t N, int64_t t, const float* A,
              const float* lse, const float* g, float* row);

// The banded GEMM form of Band and Toeplitz layouts without a key mask (kernels/aft_band.cpp): heads
// [B H] over kc, vc and wc (contiguous; k, v, w the graph's inputs) -> A [B, H, N, d], differentiable.
Tensor band_average(const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& kc, const Tensor& vc,
                    const Tensor& wc, const std::vector<AftHead>& heads, int64_t B, int64_t H, int64_t N,
                    const attention::AftLayout& layout);

}  // namespace eformer::kernels
