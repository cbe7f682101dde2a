// The projection family's mechanisms at option values the contract suite (defaults only) does not reach:
// memory_compressed with blocks smaller than the sequence (padded last block, several window prefixes in the
// causal pass, a sequence shorter than one window) and the synthesizer with every component mixed and with
// fixed random matrices. Each: no causal leak (bit for bit), step() = the parallel pass, a gradient for every
// parameter. The math is checked against PyTorch float64 in tests/python/test_attention_{memory_compressed,
// synthesizer}.py; this file is what the C++ sanitizer runs exercise.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

MechanismConfig config(bool causal, nlohmann::json options) {
  MechanismConfig c;
  c.d_model = 24, c.n_heads = 3, c.causal = causal, c.max_len = 32;
  c.options = std::move(options);
  return c;
}

void check_mechanism(const std::string& name, const nlohmann::json& options, int64_t N) {
  Seed seed;
  rng::Generator gen(seed.value);
  SCOPED_TRACE(seed.str() + " " + name + " " + options.dump() + " N=" + std::to_string(N));
  for (bool causal : {false, true}) {
    auto mech = make_mechanism(name, config(causal, options));
    Tensor x = leaf(normal({2, N, 24}, gen));
    Tensor y = mech->forward(x);
    backward(y, normal({2, N, 24}, gen));
    for (const auto& [p, t] : mech->named_parameters()) EXPECT_TRUE(grad(t).defined()) << "no gradient for " << p;
    if (!causal) continue;
    mech->eval();
    const std::vector<float> base = values(mech->forward(x.detach()));
    const int64_t t = N / 2;
    Tensor changed = x.detach().clone_data();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = t + 1; i < N; ++i)
        for (int64_t c = 0; c < 24; ++c) changed.data<float>()[(b * N + i) * 24 + c] += 7.0f;
    const std::vector<float> after = values(mech->forward(changed));
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i <= t; ++i)
        for (int64_t c = 0; c < 24; ++c)
          ASSERT_EQ(after[(b * N + i) * 24 + c], base[(b * N + i) * 24 + c]) << "row " << i << " leaked";
    auto state = mech->start(2);
    int64_t at = 0;
    for (int64_t n : {int64_t(1), int64_t(2), N - 3}) {
      const std::vector<float> out = values(mech->step(contiguous(slice(x.detach(), 1, at, at + n)), *state));
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < 24; ++c)
            ASSERT_NEAR(out[(b * n + i) * 24 + c], base[(b * N + at + i) * 24 + c], 2e-5) << "step row " << at + i;
      at += n;
    }
  }
}

TEST(MemoryCompressed, SmallBlocksPaddingAndWindowPrefixes) {
  check_mechanism("memory_compressed", {{"compression", 3}, {"block", 4}}, 11);  // 3 blocks, the last padded
  check_mechanism("memory_compressed", {{"compression", 2}, {"block", 5}}, 17);
}

TEST(MemoryCompressed, ASequenceShorterThanOneWindowUsesItsBlockOnly) {
  Seed seed;
  rng::Generator gen(seed.value);
  auto mech = make_mechanism("memory_compressed", config(true, {{"compression", 4}, {"block", 2}}));
  Tensor y = mech->forward(normal({1, 3, 24}, gen));
  EXPECT_EQ(y.shape(), (Shape{1, 3, 24}));
}

TEST(Synthesizer, EveryComponentMixedAndFixedRandomMatrices) {
  check_mechanism("synthesizer",
                  {{"synthesis", "dense+random+factorized_dense+factorized_random+dot_product"}, {"factor", 4}}, 13);
  check_mechanism("synthesizer", {{"synthesis", "random+factorized_random"}, {"trainable", false}}, 9);
}

}  // namespace
}  // namespace eformer::attention
