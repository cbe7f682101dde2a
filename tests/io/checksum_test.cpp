// checksum64: deterministic, sensitive to every byte, length and position, and fast enough to run
// over every checkpoint on load.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "eformer/io/checksum.h"

namespace eformer::io {

TEST(Checksum, EveryFlippedBitAndEveryLengthChangesIt) {
  std::vector<unsigned char> bytes(100);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = (unsigned char)(i * 37 + 11);
  const uint64_t base = checksum64(bytes.data(), bytes.size());
  EXPECT_EQ(base, checksum64(bytes.data(), bytes.size()));
  std::set<uint64_t> seen{base};
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      bytes[i] ^= (unsigned char)(1 << bit);
      seen.insert(checksum64(bytes.data(), bytes.size()));
      bytes[i] ^= (unsigned char)(1 << bit);
    }
  EXPECT_EQ(seen.size(), 1 + bytes.size() * 8);  // all distinct
  std::set<uint64_t> lengths;
  std::vector<unsigned char> zeros(70, 0);
  for (size_t n = 0; n <= zeros.size(); ++n) lengths.insert(checksum64(zeros.data(), n));
  EXPECT_EQ(lengths.size(), zeros.size() + 1);  // trailing zeros count
  EXPECT_EQ(checksum_hex(nullptr, 0).size(), 16u);
}

TEST(Checksum, SwappedWordsDiffer) {
  std::vector<uint64_t> words{1, 2, 3, 4, 5, 6, 7, 8};
  const uint64_t a = checksum64(words.data(), words.size() * 8);
  std::swap(words[0], words[4]);  // same lane, other order
  EXPECT_NE(a, checksum64(words.data(), words.size() * 8));
  std::swap(words[0], words[4]);
  std::swap(words[0], words[1]);  // other lanes
  EXPECT_NE(a, checksum64(words.data(), words.size() * 8));
}

}  // namespace eformer::io
