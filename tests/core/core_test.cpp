#include <gtest/gtest.h>

#include <set>

#include "eformer/eformer.h"

namespace eformer {

TEST(Tensor, FactoriesShapesAndStrides) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_THROW(t.size(3), IndexError);
  EXPECT_THROW(Tensor::empty({2, -1}), ShapeError);
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2}), ShapeError);
  EXPECT_THROW(t.data<int64_t>(), ShapeError);
}

TEST(Tensor, ViewsShareStorageAndCopiesDoNot) {
  Tensor t = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tr = t.as_strided({3, 2}, {1, 3}, 0);
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor c = tr.clone_data();
  c.data<float>()[0] = 42;
  EXPECT_EQ(t.to_vector()[0], 0);
  tr.detach().data<float>()[0] = 7;  // a view writes through
  EXPECT_EQ(t.to_vector()[0], 7);
}

TEST(Allocator, CountsLiveAndPeakBytes) {
  allocator::reset_peak();
  const int64_t before = allocator::stats().live_bytes;
  {
    Tensor a = Tensor::empty({1000});
    EXPECT_EQ(allocator::stats().live_bytes, before + 4000);
    Tensor b = Tensor::empty({500});
    EXPECT_GE(allocator::stats().peak_bytes, before + 6000);
  }
  EXPECT_EQ(allocator::stats().live_bytes, before);
  EXPECT_GE(allocator::stats().peak_bytes, before + 6000);
  allocator::reset_peak();
  EXPECT_EQ(allocator::stats().peak_bytes, before);
}

TEST(Rng, PhiloxKnownAnswer) {
  // Random123's known-answer test for philox4x32-10 with zero key and counter.
  auto w = rng::philox(0, 0, 0);
  EXPECT_EQ(w[0], 0x6627e8d5u);
  EXPECT_EQ(w[1], 0xe169c58du);
  EXPECT_EQ(w[2], 0xbc57ac4cu);
  EXPECT_EQ(w[3], 0x9b00dbd8u);
}

TEST(Rng, DrawsAreReplayableAndIndependentOfThreads) {
  rng::Generator gen(1234);
  std::vector<float> a(1001), b(1001), c(1001);
  auto state = gen.state();
  rng::normal_(a.data(), 1001, gen);
  gen.set_state(state);
  parallel::set_num_threads(1);
  rng::normal_(b.data(), 1001, gen);
  parallel::set_num_threads(2);
  EXPECT_EQ(a, b);
  rng::normal_(c.data(), 1001, gen);  // the counter moved on: fresh draws
  EXPECT_NE(a, c);
  // Element i of a reservation depends only on (seed, stream, counter): a prefix matches.
  std::vector<float> prefix(10);
  rng::fill_normal(prefix.data(), 10, 1234, 0, 0);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(prefix[size_t(i)], a[size_t(i)]);
}

TEST(Rng, UniformMomentsAreSane) {
  std::vector<float> u(100000);
  rng::fill_uniform(u.data(), int64_t(u.size()), 7, 3, 0);
  double mean = 0;
  for (float x : u) {
    ASSERT_GE(x, 0.f);
    ASSERT_LT(x, 1.f);
    mean += x;
  }
  mean /= double(u.size());
  EXPECT_NEAR(mean, 0.5, 0.01);  // sd of the mean is 0.0009
  std::set<float> distinct(u.begin(), u.end());
  EXPECT_GT(distinct.size(), 90000u);
}

}  // namespace eformer

namespace eformer {

TEST(Allocator, LargeBlocksAreReusedFromTheCache) {
  allocator::empty_cache();
  const int64_t before = allocator::stats().live_bytes;
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({(3 << 20) / 4});  // 3 MiB
    first = a.raw_data();
  }
  EXPECT_EQ(allocator::stats().live_bytes, before);
#if defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(allocator::stats().cached_bytes, 0);  // ASan must see every free
#else
  EXPECT_GE(allocator::stats().cached_bytes, 3 << 20);
  Tensor b = Tensor::empty({(3 << 20) / 4 - 1000});  // same size class
  EXPECT_EQ(b.raw_data(), first);
  EXPECT_EQ(allocator::stats().cached_bytes, 0);
#endif
  allocator::empty_cache();
}

}  // namespace eformer
