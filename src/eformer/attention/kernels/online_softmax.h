// The online softmax (log-sum-exp with a running max; Milakov & Gimelshein 2018, FlashAttention
// alg. 1): a row's softmax-weighted sum over keys is built block by block without ever holding
// the whole row of scores. One helper serves exact (flash), chunked, LSH and sparse attention.
//
// Per query row the state is (m, l): the max score seen and sum_j exp(s_j - m). For each new
// block of scores s[n]:
//   m' = max(m, max_j s_j);  p_j = exp(s_j - m');  l' = l exp(m - m') + sum_j p_j;
// and the caller rescales its accumulator acc' = acc exp(m - m') + sum_j p_j v_j. At the end
// out = acc / l and the row's log-sum-exp is L = m + log l.
//
// Masked scores are -inf. A row that has seen only -inf keeps m = -inf and l = 0: its
// probabilities are 0 (never exp(-inf - -inf) = NaN) and finalize gives out = 0 and L = +inf,
// so that exp(s - L) = 0 when the backward recomputes probabilities. A NaN score makes its row's
// state NaN (m = l = NaN), so out and L are NaN, as softmax's are.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "eformer/attention/kernels/tile_vec.h"
#include "eformer/ops/activation.h"

namespace eformer::attention {

struct OnlineSoftmax {
  float max = -std::numeric_limits<float>::infinity();  // m: the largest score seen
  float sum = 0.0f;                                     // l: sum exp(s - m) over scores seen

  // Replaces s[n] by p = exp(s - m') in place and folds the block into the state. Returns the
  // factor exp(m - m') by which the caller must rescale what it accumulated so far (0 before the
  // first finite score, so an accumulator that started at 0 stays exact).
  float update(float* s, int64_t n) {
    const float block_max = max_of(s, n);
    const float new_max = std::max(max, block_max);
    if (new_max == -std::numeric_limits<float>::infinity()) {  // nothing attendable yet, or NaN
      bool nan = false;  // max() skips NaN; a NaN score must make the row NaN, as softmax does
      for (int64_t j = 0; j < n; ++j) nan |= std::isnan(s[j]);
      const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
      for (int64_t j = 0; j < n; ++j) s[j] = fill;
      if (nan) max = sum = fill;  // max(NaN, x) stays NaN, so every later block is NaN too
      return nan ? fill : 1.0f;
    }
    const float rescale = kernels::fast_exp(max - new_max);  // exp(-inf) = 0 exactly
    const float block_sum = exp_in_place(s, n, new_max);
    max = new_max;
    sum = sum * rescale + block_sum;
    return rescale;
  }

  // max_j s_j, skipping NaN (-inf for none), a vector at a time (an `omp simd` max reduction
  // compiled to a scalar chain of 4 cycles an element: half the flash forward's time).
  static float max_of(const float* s, int64_t n) {
    using namespace kernels::tile;
    Vec m0 = splat(-std::numeric_limits<float>::infinity()), m1 = m0;
    int64_t j = 0;
    for (; j + 2 * kWidth <= n; j += 2 * kWidth) {
      m0 = vmax(m0, load(s + j));
      m1 = vmax(m1, load(s + j + kWidth));
    }
    if (j + kWidth <= n) m0 = vmax(m0, load(s + j)), j += kWidth;
    float m = reduce_max(vmax(m0, m1));
    for (; j < n; ++j) m = std::max(m, s[j]);
    return m;
  }
  // s_j <- exp(s_j - m) in one pass with their sum (fast_exp's value in every lane).
  static float exp_in_place(float* s, int64_t n, float m) {
    using namespace kernels::tile;
    const Vec mv = splat(m);
    Vec a0{}, a1{};
    int64_t j = 0;
    for (; j + 2 * kWidth <= n; j += 2 * kWidth) {
      const Vec p0 = exp(load(s + j) - mv), p1 = exp(load(s + j + kWidth) - mv);
      store(s + j, p0);
      store(s + j + kWidth, p1);
      a0 += p0;
      a1 += p1;
    }
    if (j + kWidth <= n) {
      const Vec p0 = exp(load(s + j) - mv);
      store(s + j, p0);
      a0 += p0;
      j += kWidth;
    }
    float total = reduce_sum(a0 + a1);
    for (; j < n; ++j) total += s[j] = kernels::fast_exp(s[j] - m);
    return total;
  }

  // Folds another partial state (over a disjoint set of keys) into this one; returns the factors
  // {for this accumulator, for the other's} so that acc = acc * first + other_acc * second.
  struct Factors {
    float self, other;
  };
  Factors merge(const OnlineSoftmax& o) {
    const float new_max = std::max(max, o.max);
    if (new_max == -std::numeric_limits<float>::infinity()) return {1.0f, 0.0f};
    const float a = kernels::fast_exp(max - new_max), b = kernels::fast_exp(o.max - new_max);
    sum = sum * a + o.sum * b;
    max = new_max;
    return {a, b};
  }

  // 1 / l: multiply the accumulator by it for the softmax-weighted mean; 0 for an empty row,
  // NaN for a row that saw a NaN score.
  float inverse_sum() const { return sum > 0.0f ? 1.0f / sum : sum == 0.0f ? 0.0f : sum; }
  // L = m + log l, so that softmax_j = exp(s_j - L); +inf for an empty row (every exp(s - L) = 0),
  // NaN for a row that saw a NaN score (its gradients are NaN too).
  float log_sum_exp() const {
    return sum > 0.0f ? max + std::log(sum) : sum == 0.0f ? std::numeric_limits<float>::infinity() : sum;
  }
};

}  // namespace eformer::attention
