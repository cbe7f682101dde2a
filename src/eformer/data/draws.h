// A stream of random draws that is a pure function of (seed, stream): word w of the stream is word
// w % 4 of rng::philox(seed, stream, w / 4). The task generators (listops.h, pathfinder.h) give each
// example its own stream, so example i is the same whatever else was generated before it.
#pragma once
#include <array>
#include <cstdint>

#include "eformer/core/rng.h"

namespace eformer::data {

class Draws {
 public:
  Draws(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  uint32_t next_u32() {
    if (word_ % 4 == 0) block_ = rng::philox(seed_, stream_, word_ / 4);
    return block_[word_++ % 4];
  }
  // Uniform in [0, 1) with 32 bits of resolution.
  double uniform() { return double(next_u32()) * (1.0 / 4294967296.0); }
  // Uniform in [0, n) for 1 <= n <= 2^32 (multiply-shift; bias below n / 2^32).
  int64_t below(int64_t n) { return int64_t((uint64_t(next_u32()) * uint64_t(n)) >> 32); }

 private:
  uint64_t seed_, stream_;
  uint64_t word_ = 0;
  std::array<uint32_t, 4> block_{};
};

}  // namespace eformer::data
