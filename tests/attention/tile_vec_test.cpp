// The online softmax's vector passes (tile_vec.h): tile::exp, as compiled in the library, is fast_exp
// in every lane, bit for bit (the forward's probabilities and the backward's recomputed ones come
// from the two); the row max skips NaN as std::max does; a row's update follows the float64
// recurrence. (This file is compiled without the library's ISA flags: max_of and update run here
// at that width, with their tails.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/tile_vec.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

TEST(TileVec, ExpIsFastExpInEveryLaneBitForBit) {
  std::mt19937 gen(std::random_device{}());
  std::uniform_real_distribution<float> wide(-120.0f, 100.0f), near(-2.0f, 0.5f);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {0.0f, -0.0f, -inf, inf, nan, -88.0f, -87.99f, 88.72283f, 88.3f, -1e-8f, 1e-8f};
  for (int i = 0; i < 4000; ++i) x.push_back(i % 2 ? wide(gen) : near(gen));
  while (x.size() % 16) x.push_back(-1.0f);  // a whole number of vectors at any width
  std::vector<float> y(x.size());
  tile::exp_lanes(x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = fast_exp(x[i]);
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(y[i])) << x[i];
    else
      EXPECT_EQ(bits(y[i]), bits(want)) << "x = " << x[i] << ": " << y[i] << " vs " << want;
  }
}

TEST(TileVec, RowMaxSkipsNaNWhereverItIs) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal;
  for (int64_t n : {1, 5, 16, 17, 40, 128, 131}) {
    for (int64_t at_nan : {int64_t(0), n / 3, n - 1}) {  // in the vector part and in the scalar tail
      std::vector<float> s(static_cast<size_t>(n));
      for (float& v : s) v = normal(gen);
      const int64_t at_max = (n * 2) / 3;
      s[size_t(at_max)] = 7.5f;
      if (at_nan != at_max) s[size_t(at_nan)] = nan;  // skipped, as std::max(m, NaN) keeps m
      EXPECT_EQ(attention::OnlineSoftmax::max_of(s.data(), n), 7.5f) << n << " " << at_nan;
    }
    std::vector<float> masked(static_cast<size_t>(n), -inf);
    EXPECT_EQ(attention::OnlineSoftmax::max_of(masked.data(), n), -inf) << n;
  }
}

TEST(TileVec, UpdateMatchesTheScalarRecurrence) {
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t n : {3, 16, 64, 100, 128}) {
    attention::OnlineSoftmax state;
    double m = -INFINITY, l = 0.0;
    for (int block = 0; block < 4; ++block) {
      std::vector<float> s(static_cast<size_t>(n));
      for (float& v : s) v = normal(gen) + float(block);
      std::vector<double> ref(s.begin(), s.end());
      const float rescale = state.update(s.data(), n);
      double bm = -INFINITY;
      for (double v : ref) bm = std::max(bm, v);
      const double nm = std::max(m, bm);
      double bs = 0.0;
      for (size_t j = 0; j < ref.size(); ++j) {
        const double p = std::exp(ref[j] - nm);
        EXPECT_NEAR(s[j], p, 1e-6 * std::max(1.0, p)) << n << " " << block << " " << j;
        bs += p;
      }
      EXPECT_NEAR(rescale, std::exp(m - nm), 1e-6) << n << " " << block;
      l = l * std::exp(m - nm) + bs;
      m = nm;
    }
    EXPECT_NEAR(state.log_sum_exp(), m + std::log(l), 1e-5 * std::abs(m + std::log(l)) + 1e-5) << n;
  }
}

}  // namespace
}  // namespace eformer::kernels
