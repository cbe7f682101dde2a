// Counter-based RNG (Philox4x32-10, Salmon et al. 2011). A draw is a pure function of
// (seed, stream, counter), so any draw can be replayed exactly and results do not depend on
// how work is split across threads.
#pragma once
#include <array>
#include <cstdint>

namespace eformer::rng {

// One Philox block: four 32-bit words for key = seed, counter = (stream, counter).
std::array<uint32_t, 4> philox(uint64_t seed, uint64_t stream, uint64_t counter);

// Element i of a reservation starting at `counter`: uniform in [0, 1), normal N(0, 1).
void fill_uniform(float* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter);
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter);

// A generator is a seed, a stream and a running counter. Each consumer reserves a range of
// counters; the state (seed, stream, counter) is all that is needed to replay what follows.
class Generator {
 public:
  struct State {
    uint64_t seed = 0;
    uint64_t stream = 0;
    uint64_t counter = 0;
    bool operator==(const State&) const = default;
  };
  explicit Generator(uint64_t seed = 0, uint64_t stream = 0) : state_{seed, stream, 0} {}
  // Reserves `blocks` Philox blocks and returns the first block's counter.
  uint64_t reserve(uint64_t blocks) {
    uint64_t c = state_.counter;
    state_.counter += blocks;
    return c;
  }
  const State& state() const { return state_; }
  void set_state(const State& s) { state_ = s; }

 private:
  State state_;
};

// The process-wide generator used by dropout and random initialisation.
Generator& default_generator();
void manual_seed(uint64_t seed);

// Draw helpers that reserve from a generator (default: the global one).
void uniform_(float* out, int64_t n, Generator& gen = default_generator());
void normal_(float* out, int64_t n, Generator& gen = default_generator());

}  // namespace eformer::rng
