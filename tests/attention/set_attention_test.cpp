// The Set Transformer's pieces (mechanisms/isab.h, set_block.h, models/pooling.h) beyond the contract
// suite, which checks ISAB against its float64 references (tests/python/references.py): a set has no
// order, so permuting the tokens permutes ISAB's outputs and leaves PMA's pooled vector unchanged, equal
// to rounding (the sums run in another order), with and without padding; no causal form; bad options.
// Inputs are drawn from a fresh seed each run ("[ seed ]"); EFORMER_TEST_SEED=<n> replays one.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/mechanisms/isab.h"
#include "eformer/eformer.h"
#include "eformer/models/pooling.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::normal;
using testing::Seed;
using testing::values;

constexpr int64_t B = 2, N = 23, D = 32, H = 4;

// Rows of x [B, N, C] (Float32 or Bool) reordered: out[b, i] = x[b, perm[i]].
Tensor permuted(const Tensor& x, const std::vector<int64_t>& perm) {
  const Tensor c = x.contiguous_data();
  Tensor out = Tensor::zeros(c.shape(), c.dtype());
  const int64_t row = c.numel() / (B * N), bytes = row * int64_t(c.dtype() == DType::Bool ? 1 : 4);
  const auto* src = static_cast<const char*>(c.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      std::copy_n(src + (b * N + perm[i]) * bytes, bytes, dst + (b * N + i) * bytes);
  return out;
}

std::vector<int64_t> random_permutation(uint64_t seed) {
  std::vector<int64_t> perm(N);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  return perm;
}

// Batch 1 keeps 2 of every 3 tokens.
Tensor some_padding() {
  Tensor m = Tensor::zeros({B, N}, DType::Bool);
  for (int64_t j = 0; j < N; ++j) m.data<bool>()[j] = true, m.data<bool>()[N + j] = j % 3 != 1;
  return m;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-5) << what << " at " << i;
}

TEST(Isab, PermutingTheTokensPermutesTheOutputs) {
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  MechanismConfig c;
  c.d_model = D, c.n_heads = H, c.options = {{"inducing", 5}};
  auto isab = make_mechanism("isab", c);
  isab->eval();
  const Tensor x = normal({B, N, D}, gen);
  const std::vector<int64_t> perm = random_permutation(seed.value);
  for (bool masked : {false, true}) {
    SCOPED_TRACE(seed.str() + (masked ? " masked" : ""));
    const Tensor mask = masked ? some_padding() : Tensor();
    const Tensor y = isab->forward(x, {}, mask);
    const Tensor y_of_permuted = isab->forward(permuted(x, perm), {}, masked ? permuted(mask, perm) : Tensor());
    expect_close(values(y_of_permuted), values(permuted(y, perm)), "ISAB(P x) vs P ISAB(x)");
  }
  // And it is not trivially so: the outputs differ from token to token.
  const std::vector<float> y = values(isab->forward(x));
  EXPECT_GT(std::abs(y[0] - y[D]), 1e-4f);
}

TEST(Pma, PoolingIsInvariantToPermutingTheTokens) {
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  models::PmaPooling pma(D, H);
  const Tensor z = normal({B, N, D}, gen);
  const std::vector<int64_t> perm = random_permutation(seed.value + 1);
  for (bool masked : {false, true}) {
    SCOPED_TRACE(seed.str() + (masked ? " masked" : ""));
    const Tensor mask = masked ? some_padding() : Tensor();
    const Tensor pooled = pma.forward(z, mask);
    ASSERT_EQ(pooled.shape(), (Shape{B, D}));
    expect_close(values(pma.forward(permuted(z, perm), masked ? permuted(mask, perm) : Tensor())), values(pooled),
                 "PMA(P z) vs PMA(z)");
  }
  // Padded tokens change nothing.
  const Tensor mask = some_padding();
  Tensor changed = z.clone_data();
  for (int64_t j = 0; j < N; ++j)
    if (!mask.data<bool>()[N + j])
      for (int64_t c = 0; c < D; ++c) changed.data<float>()[(N + j) * D + c] += 7.0f;
  expect_close(values(pma.forward(changed, mask)), values(pma.forward(z, mask)), "padding");
}

TEST(Isab, HasNoCausalFormAndChecksItsOptions) {
  MechanismConfig c;
  c.d_model = D, c.n_heads = H, c.causal = true;
  expect_error<ValueError>([&] { make_mechanism("isab", c); }, {"'isab'", "causal"});
  c.causal = false;
  for (const nlohmann::json& bad : {nlohmann::json(0), nlohmann::json(1 << 20), nlohmann::json("8")}) {
    c.options = {{"inducing", bad}};
    expect_error<ValueError>([&] { make_mechanism("isab", c); }, {"inducing"});
  }
  Tensor q = Tensor::zeros({1, 2, 5, 8});
  AttentionOptions opts;
  expect_error<ValueError>([&] { attention(q, q, q, "isab", opts); }, {"inducing"});
  MechanismArgs args;
  args.tensors["inducing"] = Tensor::zeros({3, 4, 8});  // 3 heads, q has 2
  expect_error<ShapeError>([&] { attention(q, q, q, "isab", opts, args); }, {"inducing", "[2, m, 8]"});
  args.tensors["inducing"] = Tensor::zeros({2, 4, 8});
  opts.causal = true;
  expect_error<ValueError>([&] { attention(q, q, q, "isab", opts, args); }, {"causal"});
}

}  // namespace
}  // namespace eformer::attention
