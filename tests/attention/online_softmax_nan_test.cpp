// A NaN score makes its row NaN (as softmax does), in whichever block it comes; a row with only
// masked (-inf) scores stays empty (out 0, L = +inf).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/online_softmax.h"

namespace eformer::attention {

TEST(OnlineSoftmaxNaN, ANaNScoreMakesTheRowNaNInAnyBlock) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int where = 0; where < 3; ++where) {  // the NaN block first, in the middle, last
    OnlineSoftmax state;
    for (int block = 0; block < 3; ++block) {
      std::vector<float> s = block == where ? std::vector<float>{nan, nan} : std::vector<float>{0.5f, -1.0f};
      state.update(s.data(), int64_t(s.size()));
    }
    EXPECT_TRUE(std::isnan(state.inverse_sum())) << where;
    EXPECT_TRUE(std::isnan(state.log_sum_exp())) << where;
  }
  OnlineSoftmax masked;
  std::vector<float> s{-inf, -inf};
  masked.update(s.data(), 2);  // its return value depends on the compiler's max-reduction identity
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_EQ(masked.inverse_sum(), 0.0f);
  EXPECT_EQ(masked.log_sum_exp(), inf);
}

}  // namespace eformer::attention
