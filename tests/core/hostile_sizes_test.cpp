// Sizes from outside never overflow: numel_of and checked_mul refuse products beyond kMaxNumel
// (or int64), Tensor::empty refuses before allocating, and the allocator's failure is a
// MemoryError, not std::bad_alloc.
#include <gtest/gtest.h>

#include <cstdint>

#include "eformer/eformer.h"

namespace eformer {

TEST(HostileSizes, NumelRefusesOverflowAndTheLimit) {
  const int64_t big = int64_t(1) << 62;
  EXPECT_EQ(numel_of({3, 4}), 12);
  EXPECT_EQ(numel_of({}), 1);
  EXPECT_EQ(numel_of({big, big, 0}), 0);  // nothing to hold, whatever the other sizes
  EXPECT_EQ(numel_of({kMaxNumel}), kMaxNumel);
  EXPECT_THROW(numel_of({kMaxNumel + 1}), ValueError);
  EXPECT_THROW(numel_of({big, 4}), ValueError);                  // 2^64 wraps to 0 unchecked
  EXPECT_THROW(numel_of({int64_t(1) << 32, int64_t(1) << 32}), ValueError);
  EXPECT_THROW(numel_of({2, -3}), ValueError);
  try {
    numel_of({big, 4});
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("[4611686018427387904, 4]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2^48"), std::string::npos) << e.what();
  }
}

TEST(HostileSizes, CheckedMulNamesWhatItSizes) {
  EXPECT_EQ(checked_mul(1 << 20, 1 << 20, "x"), int64_t(1) << 40);
  EXPECT_THROW(checked_mul(int64_t(1) << 40, int64_t(1) << 40, "x"), ValueError);
  EXPECT_THROW(checked_mul(-1, 2, "x"), ValueError);
  try {
    checked_mul(int64_t(1) << 62, 8, "performer: m * d");
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("performer: m * d"), std::string::npos) << e.what();
  }
}

TEST(HostileSizes, EmptyRefusesBeforeAllocatingAndTheAllocatorSaysOutOfMemory) {
  const int64_t live = allocator::stats().live_bytes;
  EXPECT_THROW(Tensor::empty({int64_t(1) << 62, 4}), ValueError);
  EXPECT_THROW(Tensor::zeros({int64_t(1) << 32, int64_t(1) << 32}), ValueError);
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EFORMER_TEST_UNDER_ASAN 1
#endif
#endif
#if !defined(__SANITIZE_ADDRESS__) && !defined(EFORMER_TEST_UNDER_ASAN)  // ASan reports, not returns null
  EXPECT_THROW(Tensor::empty({int64_t(1) << 45}), MemoryError);  // 128 TiB: beyond any address space
#endif
  EXPECT_EQ(allocator::stats().live_bytes, live);
  EXPECT_GT(allocator::available_bytes(), 0);  // /proc/meminfo is there on Linux
}

}  // namespace eformer
