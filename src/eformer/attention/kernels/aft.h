// The Attention Free Transformer's weighted average (Zhai et al. 2021, eq. 2 without the query gate):
//     A_t = sum_t' exp(K_t' + w_t,t') (.) V_t' / sum_t' exp(K_t' + w_t,t')     (per channel, (.) elementwise)
// over the keys t' query t sees (causal: t' <= t), for k, v [B, H, M, d] and a position bias w shared
// by the channels of a head. The gated output of AFT is Y = sigmoid(Q) (.) A (mechanisms/aft.h).
//
// The bias is zero outside a window of keys and learned inside it; the layouts (AftBias):
//   None      w = 0 everywhere (AFT-simple, eq. 5)
//   Dense     w [H, R, C] (R >= N, C >= M): every key is in the window (AFT-full, eq. 2)
//   Band      w [H, R, S]: w_t,t' = w[h, t, t' - t + p] for t - p <= t' < t - p + S (AFT-local, eq. 4)
//   Toeplitz  w [H, S]:    w_t,t' = w[h, t' - t + p], the same band at every t (AFT-conv, eq. 6)
// Keys outside the window keep bias 0 (global connectivity: AFT-local is *not* -inf outside), so
// A_t = (prefix_t + window_t + suffix_t) / (the same with V = 1): the keys before the window and after
// it are running sums (O(d) per query), the window is summed directly (O(S d) per query). Nothing is
// subtracted, so there is no cancellation. Causal forms need p = S - 1 (the window ends at t).
//
// Stability: every exponent is taken relative to m_t,c = the maximum of K_t',c + w_t,t' over the keys
// query t sees (the running sums carry their own running maximum and are rescaled when it grows, as
// the online softmax), so every factor is <= 1 and the largest is 1: |K| up to 80 and beyond gives
// finite outputs and gradients. The forward saves lse_t,c = m + log(den) [B, H, N, d]; the backward
// recomputes the weights exp(K + w - lse) (reverse running sums for the prefix and suffix keys,
// referenced at the minimum lse of the queries they hold, so their factors are <= 1 too).
//
// Costs: None O(N d); Band and Toeplitz O(N S d); Dense O(N M d) time (no N x M x d tensor: the
// exponentials are made and consumed pair by pair). Extra memory O(N d) (A and lse). Band and Toeplitz
// without a key mask sum the window as a band of one number per (query, key) times rows of exp(K - r) [V | 1]
// (kernels/aft_band.cpp: N d exponentials, the products summed directly), pair by pair only for queries
// whose window holds a key whose channels spread past that form's range.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::attention {

enum class AftBias { None, Dense, Band, Toeplitz };

struct AftLayout {
  AftBias kind = AftBias::None;
  int64_t S = 0;   // the window's width (Band, Toeplitz)
  int64_t p = -1;  // the window of query t starts at key t - p (Band, Toeplitz; causal: p = S - 1)
  bool causal = false;
};

// k, v [B, H, M, d]; w as the layout says (undefined for None); N queries (causal: N == M) ->
// A [B, H, N, d]. key_mask Bool [B, M] (undefined: all real): padded keys are left out of every sum and
// get no gradient; a query with no real key outputs 0. Differentiable w.r.t. k, v and w. `op` names the
// caller in error messages.
Tensor aft_average(const Tensor& k, const Tensor& v, const Tensor& w, const AftLayout& layout, int64_t N,
                   const Tensor& key_mask = {}, const char* op = "aft_average");

// Causal AFT-full with GEMMs (kernels/aft_full.cpp): k, v [B, H, N, d], w [H, >= N, >= N] -> A [B, H, N, d],
// equal to aft_average with the Dense causal layout. Query blocks of 128, each one GEMM over the keys up to
// the block's end on exp(w + r - a) (exactly 0 above the diagonal) and exp(K - r) (.) V, with r per key and
// a per query from keys up to it only (so causal outputs never depend on later keys, not even by rounding);
// from the first key whose channels spread by 60 or more on, the queries are summed pair by pair.
// Differentiable w.r.t. k, v and w (the backward likewise by GEMMs).
Tensor aft_full_causal(const Tensor& k, const Tensor& v, const Tensor& w, const char* op = "aft_full_causal");

// Bidirectional AFT-full with GEMMs (kernels/aft_full_bidirectional.cpp):
// k, v [B, H, M, d], w [H, >= N, >= M] -> A [B, H, N, d], equal to aft_average with the Dense bidirectional
// layout. Panels of 512 query rows, each one GEMM [rows, M] x [M, 2 B d] on exp(w - row max) and
// [exp(K - b) (.) V | exp(K - b)] by fixed tiles; the backward remakes exp(w) by the same panels
// (E^T [G | -H] for k and v; E (.) ([G | -H] X^T) for w only where w needs a gradient), so memory is
// O(M B d + 512 M) whatever N (no [N, M] temporary). Where the range of K plus that of w exceeds 60 (the
// GEMM's factors could underflow) the whole call goes to aft_average (pair by pair, exact at any range).
// Differentiable w.r.t. k, v and w.
Tensor aft_full_bidirectional(const Tensor& k, const Tensor& v, const Tensor& w, int64_t N,
                              const char* op = "aft_full_bidirectional");

// AFT's gated output Y = sigmoid(q) (.) A (eq. 2), q and A of one float32 shape: one pass each way
// (kernels/aft_gate.cpp), the same bits as mul(sigmoid(q), A). Differentiable w.r.t. q and A.
Tensor aft_gate(const Tensor& q, const Tensor& A, const char* op = "aft_gate");

// AFT-local's factorized band (eq. 7 inside the window; kernels/aft_band_factors.cpp): u, v [H, >= N, d']
// -> band [H, N, S], band[h, t, j] = u[h, t] . v[h, t + j - p], 0 where key t + j - p is outside [0, N);
// the layout must be Band. One pass each way, no [H, N, S, d'] temporary. Differentiable w.r.t. u and v.
Tensor aft_band_from_factors(const Tensor& u, const Tensor& v, const AftLayout& layout, int64_t N,
                             const char* op = "aft_band_from_factors");

// Streaming (causal): the prefix sums (num, den and their running maximum, [B, H, d] each) of the keys
// that have left every future window, and the keys and values still inside it (a cache [B, H, L, d]:
// the last p keys for Band and Toeplitz, all of them for Dense, none for None).
struct AftState {
  Tensor num, den, mx, k, v;
  int64_t length = 0;  // tokens consumed
  int64_t next = 0;    // the first key still in the cache (keys before it are in the prefix sums)
};
// Consumes T new tokens (k, v [B, H, T, d]) and returns their A [B, H, T, d], equal to the parallel
// causal pass over everything consumed so far; O(T S d) whatever the length (Dense: O(T L d)). No gradient.
Tensor aft_average_step(const Tensor& k, const Tensor& v, const Tensor& w, const AftLayout& layout,
                        AftState& state);

}  // namespace eformer::attention
