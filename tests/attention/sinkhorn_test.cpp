// Sparse Sinkhorn attention (mechanisms/sinkhorn.h): the balanced permutation is doubly stochastic
// (bidirectional) or a causal row-stochastic mix of earlier blocks that no later row changes; the
// permutation the attention uses is the balanced one. Forward and gradients against float64 PyTorch
// are in tests/python/test_attention_sinkhorn.py and the contract suites.
#include "eformer/attention/mechanisms/sinkhorn.h"

#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::normal;
using testing::Seed;
using testing::values;

TEST(Sinkhorn, BalancedPermutationIsDoublyStochastic) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 3, n = 7;
  for (int64_t iterations : {20, 60}) {
    Tensor P = sinkhorn_balance(normal({B, H, n, n}, gen), iterations, false);
    const std::vector<float> p = values(P);
    const float tol = iterations == 20 ? 2e-2f : 1e-3f;
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < n; ++i) {
        float row = 0, col = 0;
        for (int64_t j = 0; j < n; ++j) row += p[(bh * n + i) * n + j], col += p[(bh * n + j) * n + i];
        EXPECT_NEAR(row, 1.0f, tol) << seed.str() << " row " << i;
        EXPECT_NEAR(col, 1.0f, 1e-5f) << seed.str() << " column " << i;  // the last step normalizes columns
      }
  }
}

TEST(Sinkhorn, CausalPermutationMixesOnlyEarlierBlocksAndIgnoresLaterRows) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t n = 6;
  Tensor R = normal({1, 1, n, n}, gen);
  const std::vector<float> p = values(sinkhorn_balance(R, 8, true));
  for (int64_t i = 0; i < n; ++i) {
    float row = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (j >= i) {
        EXPECT_EQ(p[i * n + j], 0.0f) << "P[" << i << ", " << j << "] selects a block not in the past";
      }
      row += p[i * n + j];
    }
    EXPECT_NEAR(row, i == 0 ? 0.0f : 1.0f, 1e-5f) << seed.str() << " row " << i;
  }
  // Changing the logits of rows > t changes no row <= t, bit for bit.
  for (int64_t t = 0; t < n - 1; ++t) {
    Tensor changed = R.clone_data();
    for (int64_t e = (t + 1) * n; e < n * n; ++e)
      changed.data<float>()[e] = 7.0f * changed.data<float>()[e] - 2.0f;
    const std::vector<float> q = values(sinkhorn_balance(changed, 8, true));
    for (int64_t e = 0; e < (t + 1) * n; ++e) ASSERT_EQ(q[e], p[e]) << "row " << e / n << " moved, t = " << t;
  }
}

TEST(Sinkhorn, AttentionUsesTheBalancedPermutation) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 1, H = 2, N = 20, d = 4, hidden = 3;
  SinkhornOptions o;
  o.block = 4, o.iterations = 100, o.temperature = 4.0;  // mild logits: the balancing converges
  const int64_t n = 5;
  SortNetwork net{normal({H, d, hidden}, gen), normal({H, hidden}, gen), normal({H, hidden, n}, gen),
                  normal({H, n}, gen)};
  Tensor q = normal({B, H, N, d}, gen), k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen);
  Tensor P;
  Tensor out = sinkhorn_attention(q, k, v, {}, net, o, {}, &P);
  ASSERT_EQ(P.shape(), (Shape{B, H, n, n}));
  EXPECT_EQ(out.shape(), q.shape());
  const std::vector<float> p = values(P);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < n; ++i) {
      float row = 0, col = 0;
      for (int64_t j = 0; j < n; ++j) row += p[(h * n + i) * n + j], col += p[(h * n + j) * n + i];
      EXPECT_NEAR(row, 1.0f, 1e-3f) << seed.str();
      EXPECT_NEAR(col, 1.0f, 1e-5f) << seed.str();
    }
}

// With SortCut and a short last block, padded keys change nothing at any query (they are zeroed before
// the summaries and the mixing and never attended), in both forms.
TEST(Sinkhorn, PaddedKeysChangeNothingWithSortCutAndAShortLastBlock) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, N = 30, d = 4, hidden = 3, n = 8;
  SortNetwork net{normal({H, d, hidden}, gen), normal({H, hidden}, gen), normal({H, hidden, n}, gen),
                  normal({H, n}, gen)};
  Tensor q = normal({B, H, N, d}, gen), k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen);
  Tensor mask = Tensor::zeros({B, N}, DType::Bool);
  for (int64_t j = 0; j < N; ++j)
    mask.data<bool>()[j] = true, mask.data<bool>()[N + j] = j % 4 != 1 && j < 23;
  for (const auto& [sortcut, causal] : {std::pair<int64_t, bool>{2, false}, {0, false}, {0, true}}) {
    SinkhornOptions o;
    o.block = 4, o.sortcut = sortcut;
    AttentionOptions opts;
    opts.causal = causal, opts.key_mask = mask;
    const std::vector<float> base = values(sinkhorn_attention(q, k, v, opts, net, o));
    Tensor k2 = k.clone_data(), v2 = v.clone_data();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < N; ++j)
        if (!mask.data<bool>()[N + j])
          for (int64_t c = 0; c < d; ++c) {
            k2.data<float>()[((H + h) * N + j) * d + c] = 9.0f;
            v2.data<float>()[((H + h) * N + j) * d + c] = -7.0f;
          }
    const std::vector<float> after = values(sinkhorn_attention(q, k2, v2, opts, net, o));
    for (size_t e = 0; e < base.size(); ++e)
      ASSERT_EQ(after[e], base[e]) << seed.str() << " sortcut " << sortcut << " causal " << causal << " at "
                                   << e;
  }
}

// The native step across block boundaries: each new block balances its row of P from the kept column
// sums, as the parallel causal pass does.
TEST(Sinkhorn, StreamingAcrossBlocksEqualsTheParallelPass) {
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  MechanismConfig c;
  c.d_model = 16, c.n_heads = 2, c.max_len = 32, c.causal = true;
  c.options = {{"block", 4}, {"iterations", 6}};
  auto mech = make_mechanism("sinkhorn", c);
  mech->eval();
  ASSERT_EQ(mech->streaming_path(), "native");
  const int64_t B = 2, N = 23, D = 16;
  Tensor x = normal({B, N, D}, gen);
  const std::vector<float> full = values(mech->forward(x));
  auto state = mech->start(B);
  int64_t at = 0;
  for (int64_t n : {1, 4, 3, 11, 1, 3}) {
    const std::vector<float> out = values(mech->step(contiguous(slice(x, 1, at, at + n)), *state));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t e = 0; e < D; ++e)
          ASSERT_NEAR(out[(b * n + i) * D + e], full[(b * N + at + i) * D + e], 2e-5)
              << seed.str() << " row " << at + i;
    at += n;
  }
  EXPECT_EQ(state->length(), N);
}

TEST(Sinkhorn, RejectsBadOptionsByName) {
  MechanismConfig c;
  c.d_model = 16, c.n_heads = 2, c.max_len = 32, c.causal = true;
  c.options = {{"sortcut", 2}};
  testing::expect_error<ValueError>([&] { make_mechanism("sinkhorn", c); }, {"sortcut", "encoder-only"});
  c.causal = false;
  c.options = {{"temperature", -1.0}};
  testing::expect_error<ValueError>([&] { make_mechanism("sinkhorn", c); }, {"temperature", "> 0"});
  c.options = {{"block", 0}};
  testing::expect_error<ValueError>([&] { make_mechanism("sinkhorn", c); }, {"block"});
}

}  // namespace
}  // namespace eformer::attention
