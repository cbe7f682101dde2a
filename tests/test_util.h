// Helpers shared by the C++ tests.
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "eformer/core/tensor.h"

namespace eformer::testing {

// A fresh empty directory, removed with everything in it at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "eformer_test_XXXXXX").string();
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  // Writes `bytes` to `relative` (creating folders) and returns its path.
  std::filesystem::path write(const std::string& relative, const std::string& bytes) const {
    std::filesystem::path p = path / relative;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  // The names in the directory, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

// A fresh seed each run, printed so that a failure can be replayed with EFORMER_TEST_SEED.
struct Seed {
  uint64_t value;
  Seed() {
    if (const char* s = std::getenv("EFORMER_TEST_SEED")) {
      value = std::strtoull(s, nullptr, 10);
    } else {
      std::random_device rd;
      value = (uint64_t(rd()) << 32 | rd()) % 1000000007ull;
    }
    std::printf("[ seed     ] %llu (EFORMER_TEST_SEED=%llu replays it)\n", (unsigned long long)value,
                (unsigned long long)value);
  }
  std::string str() const { return "seed " + std::to_string(value); }
};

// N(mean, stddev²) values drawn from `gen`.
inline Tensor normal(const Shape& shape, rng::Generator& gen, float stddev = 1.0f, float mean = 0.0f) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  rng::normal_(p, t.numel(), gen);
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = mean + stddev * p[i];
  return t;
}
// N(0, 1) values from the default generator (for tests that seed or replay it: rng::manual_seed, checkpoint).
inline Tensor normal(const Shape& shape) { return normal(shape, rng::default_generator()); }

// A fresh leaf: a copy of t's values that requires gradients.
inline Tensor leaf(const Tensor& t) {
  Tensor c = t.clone_data();
  set_requires_grad(c, true);
  return c;
}

// The values of t, in order.
inline std::vector<float> values(const Tensor& t) {
  Tensor c = t.contiguous_data();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

// Every actual value finite and within tol * max(1, max |expected|) of the float64 expectation.
inline void expect_near_all(const std::vector<float>& actual, const std::vector<double>& expected, double tol,
                            const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double scale = 1.0;
  for (double e : expected) scale = std::max(scale, std::abs(e));
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_TRUE(std::isfinite(actual[i])) << what << " at " << i;
    ASSERT_NEAR(actual[i], expected[i], tol * scale) << what << " at " << i;
  }
}

// Deterministic values in [-2, 2] (a 64-bit LCG of `seed`), for tests that want fixed inputs.
inline Tensor randn(const Shape& shape, uint64_t seed) {
  std::vector<float> x(size_t(numel_of(shape)));
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& e : x) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    e = float(int64_t(state >> 40) % 2001 - 1000) / 500.0f;
  }
  return Tensor::from_vector(x, shape);
}

// Expects `fn` to throw E whose message contains every one of `parts`.
template <class E, class F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// The message of the exception of type E that fn throws ("" and a test failure if none).
template <class E, class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

}  // namespace eformer::testing
