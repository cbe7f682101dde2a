#include "eformer/core/rng.h"

#include <cmath>

#include "eformer/core/parallel.h"

namespace eformer::rng {

std::array<uint32_t, 4> philox(uint64_t seed, uint64_t stream, uint64_t counter) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = uint32_t(stream), c3 = uint32_t(stream >> 32);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kMul0) * c0, p1 = uint64_t(kMul1) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += kWeyl0, k1 += kWeyl1;
  }
  return {c0, c1, c2, c3};
}

namespace {
inline float to_unit(uint32_t x) { return float(x >> 8) * (1.0f / 16777216.0f); }  // [0, 1), 24 bits
}  // namespace

// Element i uses word i % 4 of block counter + i / 4.
void fill_uniform(float* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter) {
  parallel::parallel_for((n + 3) / 4, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      auto w = philox(seed, stream, counter + uint64_t(b));
      for (int64_t j = 0; j < 4 && 4 * b + j < n; ++j) out[4 * b + j] = to_unit(w[size_t(j)]);
    }
  });
}

// Box-Muller on two words gives two normals: element i uses block counter + i / 4, words
// (0,1) -> elements 4b, 4b+1 and (2,3) -> 4b+2, 4b+3.
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter) {
  parallel::parallel_for((n + 3) / 4, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      auto w = philox(seed, stream, counter + uint64_t(b));
      for (int pair = 0; pair < 2; ++pair) {
        // u1 in (0, 1] so log(u1) is finite.
        double u1 = (double(w[size_t(2 * pair)]) + 1.0) / 4294967296.0;
        double u2 = double(w[size_t(2 * pair + 1)]) / 4294967296.0;
        double r = std::sqrt(-2.0 * std::log(u1)), theta = 2.0 * M_PI * u2;
        int64_t i = 4 * b + 2 * pair;
        if (i < n) out[i] = float(r * std::cos(theta));
        if (i + 1 < n) out[i + 1] = float(r * std::sin(theta));
      }
    }
  });
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(uint64_t seed) { default_generator().set_state({seed, 0, 0}); }

void uniform_(float* out, int64_t n, Generator& gen) {
  uint64_t c = gen.reserve(uint64_t(n + 3) / 4);
  fill_uniform(out, n, gen.state().seed, gen.state().stream, c);
}

void normal_(float* out, int64_t n, Generator& gen) {
  uint64_t c = gen.reserve(uint64_t(n + 3) / 4);
  fill_normal(out, n, gen.state().seed, gen.state().stream, c);
}

}  // namespace eformer::rng
