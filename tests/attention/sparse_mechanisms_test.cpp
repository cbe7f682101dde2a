// The block-sparse mechanisms as modules with options that make their patterns sparse at the test
// length (the registry contract suite runs them with their defaults, which are dense at its sizes):
// no causal leak, identical bits on 1 and 2 threads with attention dropout, dropout replayed under
// autograd::checkpoint, and the functional form equal to the pattern's dense float64 softmax with
// dropout off (forward only: the gradients are in the contract and Python suites).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::normal;
using testing::Seed;
using testing::values;

constexpr int64_t B = 2, N = 150, D = 32, H = 4;

struct Case {
  std::string name;
  nlohmann::json options;
};

std::vector<Case> cases() {
  return {{"sparse_strided", {{"l", 12}}},
          {"sparse_strided", {{"l", 7}, {"combine", "split"}}},
          {"sparse_fixed", {{"l", 16}, {"c", 3}}},
          {"longformer", {{"window", 20}, {"dilation", {1, 2, 1, 3}}, {"global", {0, 77}}}},
          {"bigbird", {{"block", 8}, {"global_blocks", 1}, {"random_blocks", 2}, {"seed", 4}}},
          {"local", {{"block", 16}, {"memory", 24}}},
          {"local", {{"image_shape", {10, 15}}, {"block_shape", {3, 5}}, {"memory_shape", {2, 2}}}}};
}

std::shared_ptr<Mechanism> make(const Case& c, bool causal, float dropout) {
  MechanismConfig config;
  config.d_model = D, config.n_heads = H, config.causal = causal, config.max_len = N,
  config.dropout = dropout;
  config.options = c.options;
  return make_mechanism(c.name, config);
}

// Output, input gradient and parameter gradients of one training pass.
std::vector<std::vector<float>> train_pass(Mechanism& mech, const Tensor& x, uint64_t seed, bool recompute) {
  rng::manual_seed(seed);
  mech.zero_grad();
  Tensor xl = x.clone_data();
  set_requires_grad(xl, true);
  auto fn = [&](const std::vector<Tensor>& in) { return mech.forward(in[0]); };
  Tensor y = recompute ? autograd::checkpoint(fn, {xl}) : fn({xl});
  rng::Generator up(seed + 1);
  backward(y, normal(y.shape(), up));
  std::vector<std::vector<float>> out{values(y), values(grad(xl))};
  for (const auto& [name, p] : mech.named_parameters()) out.push_back(values(grad(p)));
  return out;
}

class SparseMechanisms : public ::testing::TestWithParam<size_t> {
 protected:
  const Case& param() const {
    static const std::vector<Case> all = cases();
    return all[GetParam()];
  }
};

TEST_P(SparseMechanisms, NoCausalLeak) {
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  auto mech = make(param(), true, 0.0f);
  mech->eval();
  Tensor x = normal({B, N, D}, gen);
  const std::vector<float> base = values(mech->forward(x));
  for (int64_t t : {int64_t(0), int64_t(70), N - 2}) {
    Tensor changed = x.clone_data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = t + 1; i < N; ++i)
        for (int64_t c = 0; c < D; ++c) changed.data<float>()[(b * N + i) * D + c] += 5.0f;
    const std::vector<float> after = values(mech->forward(changed));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i <= t; ++i)
        for (int64_t c = 0; c < D; ++c)
          ASSERT_EQ(after[(b * N + i) * D + c], base[(b * N + i) * D + c]) << seed.str() << " row " << i;
  }
}

TEST_P(SparseMechanisms, IdenticalBitsOnOneAndTwoThreadsAndUnderRecomputation) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int before = parallel::num_threads();
  for (bool causal : {false, true}) {
    rng::manual_seed(seed.value);
    auto mech = make(param(), causal, 0.2f);
    mech->train();
    Tensor x = normal({B, N, D}, gen);
    parallel::set_num_threads(1);
    const auto one = train_pass(*mech, x, seed.value, false);
    parallel::set_num_threads(2);
    const auto two = train_pass(*mech, x, seed.value, false);
    const auto again = train_pass(*mech, x, seed.value, true);
    const auto other = train_pass(*mech, x, seed.value + 5, false);
    parallel::set_num_threads(before);
    ASSERT_EQ(one.size(), two.size());
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_EQ(one[i], two[i]) << seed.str() << (causal ? " causal" : "") << ": tensor " << i;
      EXPECT_EQ(one[i], again[i]) << seed.str() << (causal ? " causal" : "") << ": recomputed tensor " << i;
    }
    EXPECT_NE(one[0], other[0]) << "attention dropout changed nothing";
  }
}

TEST_P(SparseMechanisms, FunctionalFormIsSoftmaxOverThePattern) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t d = 8, M = N;
  MechanismArgs args;
  args.options = param().options;
  for (bool causal : {false, true}) {
    Tensor q = normal({1, H, N, d}, gen), k = normal({1, H, M, d}, gen), v = normal({1, H, M, d}, gen);
    AttentionOptions opts;
    opts.causal = causal;
    const std::vector<float> out = values(attention(q, k, v, param().name, opts, args));
    const Tensor pattern = attention_pattern(param().name, N, M, H, causal, args);
    int64_t allowed = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        std::vector<double> s(size_t(M), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < M; ++j) {
          if (!pattern.data<bool>()[(h * N + i) * M + j]) continue;
          ++allowed;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += double(q.data<float>()[(h * N + i) * d + c]) * k.data<float>()[(h * M + j) * d + c];
          mx = std::max(mx, s[size_t(j)] = dot / std::sqrt(double(d)));
        }
        double sum = 0;
        std::vector<double> o(size_t(d), 0.0);
        for (int64_t j = 0; j < M; ++j) {
          if (s[size_t(j)] == -INFINITY) continue;
          const double p = std::exp(s[size_t(j)] - mx);
          sum += p;
          for (int64_t c = 0; c < d; ++c) o[size_t(c)] += p * v.data<float>()[(h * M + j) * d + c];
        }
        for (int64_t c = 0; c < d; ++c)
          ASSERT_NEAR(out[size_t((h * N + i) * d + c)], sum > 0 ? o[size_t(c)] / sum : 0.0, 2e-5)
              << seed.str() << " head " << h << " row " << i;
      }
    EXPECT_LT(allowed, H * N * M / 2) << "the test pattern should be sparse";
  }
}

std::string case_name(const ::testing::TestParamInfo<size_t>& info) {
  return cases()[info.param].name + "_" + std::to_string(info.param);
}

INSTANTIATE_TEST_SUITE_P(Options, SparseMechanisms, ::testing::Range(size_t(0), cases().size()), case_name);

}  // namespace
}  // namespace eformer::attention
