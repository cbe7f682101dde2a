// The online-softmax helper, exact attention's error messages and the full/flash agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "eformer/attention/functional.h"
#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/core/rng.h"
#include "../test_util.h"

namespace eformer::attention {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Softmax-weighted mean of values by blocks of `block` scores, through OnlineSoftmax.
float online_mean(std::vector<float> s, const std::vector<float>& v, size_t block, float* lse) {
  OnlineSoftmax st;
  float acc = 0.0f;
  for (size_t j0 = 0; j0 < s.size(); j0 += block) {
    const size_t n = std::min(block, s.size() - j0);
    acc *= st.update(s.data() + j0, int64_t(n));
    for (size_t j = 0; j < n; ++j) acc += s[j0 + j] * v[j0 + j];
  }
  *lse = st.log_sum_exp();
  return acc * st.inverse_sum();
}

TEST(OnlineSoftmax, MatchesTwoPassSoftmaxForAnyBlocking) {
  std::vector<float> s = {0.5f, -3.0f, 7.0f, 2.0f, -kInf, 1.0f, 6.5f, -1.0f, 30.0f, 0.0f};
  std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  double m = -1e30, sum = 0, weighted = 0;
  for (float x : s) m = std::max(m, double(x));
  for (size_t j = 0; j < s.size(); ++j) {
    const double e = std::exp(double(s[j]) - m);
    sum += e;
    weighted += e * v[j];
  }
  for (size_t block : {1, 2, 3, 4, 10, 16}) {
    float lse = 0;
    const float mean = online_mean(s, v, block, &lse);
    EXPECT_NEAR(mean, weighted / sum, 1e-5) << "block " << block;
    EXPECT_NEAR(lse, m + std::log(sum), 1e-5) << "block " << block;
  }
}

TEST(OnlineSoftmax, AllMaskedRowGivesZeroAndInfiniteLse) {
  std::vector<float> s(5, -kInf), v(5, 1.0f);
  float lse = 0;
  EXPECT_EQ(online_mean(s, v, 2, &lse), 0.0f);
  EXPECT_EQ(lse, kInf);
  // A masked first block followed by a real one: the real block alone decides.
  std::vector<float> s2 = {-kInf, -kInf, 1.0f, 1.0f}, v2 = {100, 100, 2, 4};
  EXPECT_NEAR(online_mean(s2, v2, 2, &lse), 3.0f, 1e-6);
  EXPECT_NEAR(lse, 1.0f + std::log(2.0f), 1e-6);
  EXPECT_FALSE(std::isnan(lse));
}

TEST(OnlineSoftmax, MergeOfDisjointPartsEqualsOneState) {
  std::vector<float> a = {1.0f, 5.0f, -2.0f}, b = {4.0f, 9.0f};
  OnlineSoftmax sa, sb, sall;
  std::vector<float> all = {1.0f, 5.0f, -2.0f, 4.0f, 9.0f};
  sa.update(a.data(), 3);
  sb.update(b.data(), 2);
  sall.update(all.data(), 5);
  const auto f = sa.merge(sb);
  EXPECT_NEAR(sa.max, sall.max, 0);
  EXPECT_NEAR(sa.sum, sall.sum, 1e-5);
  EXPECT_NEAR(f.self, std::exp(5.0f - 9.0f), 1e-7);
  EXPECT_NEAR(f.other, 1.0f, 0);
  OnlineSoftmax empty;
  const auto g = sa.merge(empty);
  EXPECT_EQ(g.other, 0.0f);
  EXPECT_EQ(g.self, 1.0f);
}

using testing::randn;

using testing::error_of;

TEST(ExactAttention, ErrorsNameTheArgumentAndTheExpectation) {
  Tensor q = randn({2, 3, 5, 8}, 1), k = randn({2, 3, 7, 8}, 2), v = randn({2, 3, 7, 8}, 3);
  EXPECT_THROW(attention(q, randn({2, 3, 7, 4}, 4), v, "flash"), ShapeError);
  EXPECT_NE(error_of<Error>([&] {
              attention(q, k, randn({2, 3, 6, 8}, 5), "full");
            }).find("v is Tensor[2, 3, 6, 8]"),
            std::string::npos);
  EXPECT_NE(error_of<Error>([&] {
              attention(randn({3, 5, 8}, 1), k, v, "flash");
            }).find("expected 4 dims"),
            std::string::npos);
  AttentionOptions bad_dtype;
  bad_dtype.key_mask = Tensor::zeros({2, 7});
  EXPECT_NE(error_of<Error>([&] { attention(q, k, v, "flash", bad_dtype); }).find("key_mask has dtype float32"),
            std::string::npos);
  AttentionOptions bad_shape;
  bad_shape.key_mask = Tensor::zeros({2, 5}, DType::Bool);
  EXPECT_NE(error_of<Error>([&] { attention(q, k, v, "flash", bad_shape); }).find("expected [batch, keys] = [2, 7]"),
            std::string::npos);
  const std::string unknown = error_of<Error>([&] { attention(q, k, v, "fast"); });
  EXPECT_NE(unknown.find("unknown kind 'fast'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("full, flash"), std::string::npos) << unknown;
  EXPECT_THROW(attention(q, k, v, "fast"), ValueError);
}

TEST(ExactAttention, FlashAgreesWithFull) {
  for (bool causal : {false, true}) {
    for (auto [N, M] : {std::pair<int64_t, int64_t>{65, 65}, {7, 130}, {130, 7}, {1, 1}}) {
      Tensor q = randn({2, 2, N, 40}, 11), k = randn({2, 2, M, 40}, 12), v = randn({2, 2, M, 40}, 13);
      AttentionOptions o;
      o.causal = causal;
      std::vector<float> a = full_attention(q, k, v, o).to_vector(),
                         b = flash_attention(q, k, v, o).to_vector();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_FALSE(std::isnan(b[i]));
        ASSERT_NEAR(a[i], b[i], 2e-5) << "N " << N << " M " << M << " causal " << causal << " at " << i;
      }
    }
  }
}

}  // namespace
}  // namespace eformer::attention
