// The block-sparse kernel (attention/kernels/block_sparse.h) and its layouts: forward and gradients
// against a float64 dense softmax restricted to the same element set, on random patterns whose
// sizes do and do not divide the block, with causal and key masks; identical bits on 1 and 2
// threads (dropout on); dropout equal to full_attention's; the layout's views and the cache; errors.
#include "eformer/attention/kernels/block_sparse.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using kernels::BlockSparseLayout;
using testing::expect_near_all;
using testing::normal;
using testing::leaf;
using testing::values;
using testing::expect_error;
using testing::Seed;

// A random element pattern: each (h, i, j) allowed with probability `density`, a pure function of
// the seed; rows of whole blocks and empty blocks appear too (density 0 or 1 on some query blocks).
kernels::ElementRule random_rule(uint64_t seed, double density) {
  return [seed, density](int64_t h, int64_t i, int64_t j) {
    const auto w = rng::philox(seed, uint64_t(h), uint64_t(i) << 32 | uint64_t(j));
    if (i % 7 == 3) return true;    // a full row
    if (i % 11 == 5) return false;  // a row with no key
    return double(w[0]) / 4294967296.0 < density;
  };
}

struct Dense {
  std::vector<double> out, dq, dk, dv;
};

// Float64 softmax attention over allowed[b][h][i][j] (the rule, the key mask and causal).
Dense dense_reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                      const std::vector<float>& g, const std::vector<char>& allowed, int64_t BH, int64_t N,
                      int64_t M, int64_t d, double scale) {
  Dense r;
  r.out.assign(size_t(BH * N * d), 0), r.dq.assign(size_t(BH * N * d), 0);
  r.dk.assign(size_t(BH * M * d), 0), r.dv.assign(size_t(BH * M * d), 0);
  std::vector<double> p(static_cast<size_t>(M)), dp(static_cast<size_t>(M));
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t i = 0; i < N; ++i) {
      const size_t row = size_t(bh * N + i);
      double mx = -INFINITY;
      for (int64_t j = 0; j < M; ++j) {
        p[j] = -INFINITY;
        if (!allowed[row * M + j]) continue;
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += double(q[row * d + c]) * k[(bh * M + j) * d + c];
        mx = std::max(mx, p[j] = s * scale);
      }
      if (mx == -INFINITY) continue;
      double sum = 0, dot = 0;
      for (int64_t j = 0; j < M; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx));
      for (int64_t j = 0; j < M; ++j) {
        p[j] /= sum;
        dp[j] = 0;
        for (int64_t c = 0; c < d; ++c) {
          r.out[row * d + c] += p[j] * v[(bh * M + j) * d + c];
          dp[j] += double(g[row * d + c]) * v[(bh * M + j) * d + c];
          r.dv[(bh * M + j) * d + c] += p[j] * g[row * d + c];
        }
        dot += p[j] * dp[j];
      }
      for (int64_t j = 0; j < M; ++j) {
        const double ds = p[j] * (dp[j] - dot) * scale;
        for (int64_t c = 0; c < d; ++c) {
          r.dq[row * d + c] += ds * k[(bh * M + j) * d + c];
          r.dk[(bh * M + j) * d + c] += ds * q[row * d + c];
        }
      }
    }
  return r;
}

struct Case {
  int64_t N, M, block, layout_heads;
  bool causal, masked;
};

TEST(BlockSparse, MatchesFloat64DenseSoftmaxOverTheSamePattern) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 3, d = 12;
  for (const Case& cs :
       {Case{37, 37, 16, 1, false, false}, Case{37, 37, 16, 3, true, true}, Case{64, 64, 16, 3, true, false},
        Case{50, 29, 8, 1, false, true}, Case{20, 45, 32, 3, false, false}, Case{45, 45, 64, 1, true, true},
        Case{33, 70, 7, 3, true, false}}) {
    for (double density : {0.05, 0.4}) {
      SCOPED_TRACE(seed.str() + " N=" + std::to_string(cs.N) + " M=" + std::to_string(cs.M) +
                   " block=" + std::to_string(cs.block) + " heads=" + std::to_string(cs.layout_heads) +
                   (cs.causal ? " causal" : "") + (cs.masked ? " masked" : "") +
                   " density=" + std::to_string(density));
      const kernels::ElementRule rule = random_rule(seed.value + uint64_t(cs.N), density);
      auto layout = std::make_shared<const BlockSparseLayout>(
          kernels::build_layout(cs.N, cs.M, cs.block, cs.layout_heads, rule));
      Tensor q = leaf(normal({B, H, cs.N, d}, gen)), k = leaf(normal({B, H, cs.M, d}, gen)),
             v = leaf(normal({B, H, cs.M, d}, gen)), g = normal({B, H, cs.N, d}, gen);
      AttentionOptions opts;
      opts.causal = cs.causal;
      if (cs.masked) {
        opts.key_mask = Tensor::zeros({B, cs.M}, DType::Bool);
        for (int64_t j = 0; j < cs.M; ++j)
          opts.key_mask.data<bool>()[j] = true, opts.key_mask.data<bool>()[cs.M + j] = (j * 5) % 3 != 1;
      }
      Tensor out = block_sparse_attention(q, k, v, opts, layout);
      backward(out, g);
      std::vector<char> allowed(size_t(B * H * cs.N * cs.M));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < cs.N; ++i)
            for (int64_t j = 0; j < cs.M; ++j)
              allowed[size_t(((b * H + h) * cs.N + i) * cs.M + j)] =
                  rule(h % cs.layout_heads, i, j) && (!cs.causal || causal_allows(i, j, cs.N, cs.M)) &&
                  (!cs.masked || opts.key_mask.data<bool>()[b * cs.M + j]);
      const Dense r = dense_reference(values(q), values(k), values(v), values(g), allowed, B * H, cs.N, cs.M,
                                      d, 1.0 / std::sqrt(double(d)));
      expect_near_all(values(out), r.out, 1e-5, "forward");
      expect_near_all(values(grad(q)), r.dq, 1e-4, "grad q");
      expect_near_all(values(grad(k)), r.dk, 1e-4, "grad k");
      expect_near_all(values(grad(v)), r.dv, 1e-4, "grad v");
    }
  }
}

TEST(BlockSparse, LayoutKeepsOnlyTouchedBlocksAndMasksOnlyPartialOnes) {
  // Causal at N = M = 40, block 16: blocks below the diagonal are full, the diagonal ones masked
  // (the last one short), those above are absent.
  const auto L = kernels::build_layout(40, 40, 16, 1, [](int64_t, int64_t i, int64_t j) { return j <= i; });
  EXPECT_EQ(L.nq, 3);
  EXPECT_EQ(L.nk, 3);
  EXPECT_EQ(L.pairs(), 6);
  EXPECT_EQ(L.allowed_elements, 40 * 41 / 2);
  std::vector<std::pair<int32_t, bool>> row2;
  for (int64_t p = L.row_start[2]; p < L.row_start[3]; ++p)
    row2.push_back({L.row_key_block[p], L.row_mask[p] >= 0});
  EXPECT_EQ(row2, (std::vector<std::pair<int32_t, bool>>{{0, false}, {1, false}, {2, true}}));
  // The two full-size diagonal blocks share one mask; the short last one has its own.
  EXPECT_EQ(L.masks.size(), size_t(2 * 16 * 16));
  // The column view lists the same pairs.
  EXPECT_EQ(L.col_start.back(), L.pairs());
  for (int64_t kb = 0; kb < L.nk; ++kb)
    EXPECT_EQ(L.col_start[kb + 1] - L.col_start[kb], L.nq - kb) << "key block " << kb;
  const auto dense = kernels::build_layout(40, 24, 16, 1, [](int64_t, int64_t, int64_t) { return true; });
  EXPECT_EQ(dense.pairs(), 3 * 2);
  EXPECT_TRUE(dense.masks.empty());
  EXPECT_DOUBLE_EQ(dense.density(), 1.0);
}

TEST(BlockSparse, CandidatesRestrictWhatTheRuleIsAskedAbout) {
  // A rule that allows everything, with candidates naming only the diagonal block: only it is kept.
  const auto L = kernels::build_layout(
      48, 48, 16, 1, [](int64_t, int64_t, int64_t) { return true; },
      [](int64_t, int64_t qb, int64_t, std::vector<int64_t>& out) {
        out.insert(out.end(), {qb, qb, -1, 99});
      });
  EXPECT_EQ(L.pairs(), 3);
  for (int64_t qb = 0; qb < 3; ++qb) EXPECT_EQ(L.row_key_block[L.row_start[qb]], qb);
}

TEST(BlockSparse, IdenticalBitsOnOneAndTwoThreadsWithDropout) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int before = parallel::num_threads();
  auto layout = std::make_shared<const BlockSparseLayout>(
      kernels::build_layout(150, 150, 32, 2, random_rule(seed.value, 0.3)));
  Tensor q = normal({1, 2, 150, 16}, gen), k = normal({1, 2, 150, 16}, gen), v = normal({1, 2, 150, 16}, gen),
         g = normal({1, 2, 150, 16}, gen);
  auto run = [&](int threads) {
    parallel::set_num_threads(threads);
    rng::manual_seed(seed.value);
    Tensor ql = leaf(q.clone_data()), kl = leaf(k.clone_data()), vl = leaf(v.clone_data());
    AttentionOptions opts;
    opts.causal = true;
    opts.dropout = 0.2f;
    Tensor out = block_sparse_attention(ql, kl, vl, opts, layout);
    backward(out, g);
    return std::vector<std::vector<float>>{values(out), values(grad(ql)), values(grad(kl)), values(grad(vl))};
  };
  const auto one = run(1), two = run(2);
  parallel::set_num_threads(before);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << ": tensor " << i;
}

TEST(BlockSparse, DenseLayoutDropsWhatFullAttentionDrops) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t N = 45, M = 45;
  auto layout = std::make_shared<const BlockSparseLayout>(
      kernels::build_layout(N, M, 16, 1, [](int64_t, int64_t, int64_t) { return true; }));
  Tensor q = normal({2, 2, N, 8}, gen), k = normal({2, 2, M, 8}, gen), v = normal({2, 2, M, 8}, gen),
         g = normal({2, 2, N, 8}, gen);
  auto run = [&](bool sparse) {
    rng::manual_seed(seed.value);
    Tensor ql = leaf(q.clone_data()), kl = leaf(k.clone_data()), vl = leaf(v.clone_data());
    AttentionOptions opts;
    opts.causal = true;
    opts.dropout = 0.3f;
    Tensor out = sparse ? block_sparse_attention(ql, kl, vl, opts, layout) : full_attention(ql, kl, vl, opts);
    backward(out, g);
    return std::vector<std::vector<float>>{values(out), values(grad(ql)), values(grad(kl)), values(grad(vl))};
  };
  const auto sparse = run(true), full = run(false);
  for (size_t t = 0; t < sparse.size(); ++t)
    for (size_t i = 0; i < sparse[t].size(); ++i)
      ASSERT_NEAR(sparse[t][i], full[t][i], 2e-4 * std::max(1.0f, std::abs(full[t][i])))
          << seed.str() << ": tensor " << t << " at " << i;
}

TEST(BlockSparse, CacheBuildsEachLayoutOnce) {
  kernels::clear_layout_cache();
  const int64_t before = kernels::layouts_built();
  auto build = [] {
    return kernels::LayoutParts{std::make_shared<const BlockSparseLayout>(
        kernels::build_layout(20, 20, 8, 1, [](int64_t, int64_t i, int64_t j) { return j <= i; }))};
  };
  auto a = kernels::cached_layouts("test causal 20", build);
  auto b = kernels::cached_layouts("test causal 20", build);
  EXPECT_EQ(a[0].get(), b[0].get());
  EXPECT_EQ(kernels::layouts_built() - before, 1);
  for (size_t n = 0; n < kernels::kLayoutCacheEntries + 5; ++n)
    kernels::cached_layouts("test filler " + std::to_string(n), build);
  EXPECT_EQ(kernels::layout_cache_size(), kernels::kLayoutCacheEntries);
}

// A random pattern as two disjoint parts, the second over a random order of a subset of the rows
// and of the keys (as strided's residue classes): forward, gradients against float64, 1 vs 2
// threads with dropout, and dropout equal to the one-part layout of the same set.
struct TwoParts {
  kernels::ElementRule whole;
  std::vector<std::shared_ptr<const BlockSparseLayout>> parts;
};
TwoParts two_parts(uint64_t seed, int64_t N, int64_t M, int64_t block) {
  TwoParts t;
  t.whole = random_rule(seed, 0.3);
  auto in_second = [seed](int64_t i, int64_t j) {
    return (rng::philox(seed, 9, uint64_t(i * 1000 + j))[1] & 1) != 0;
  };
  const kernels::ElementRule whole = t.whole;
  std::vector<int64_t> rows, keys;
  for (int64_t i = 0; i < N; ++i) rows.push_back(i);
  for (int64_t j = 0; j < M; ++j) keys.push_back(j);
  std::mt19937_64 shuffle(seed);
  std::shuffle(rows.begin(), rows.end(), shuffle);
  std::shuffle(keys.begin(), keys.end(), shuffle);
  rows.resize(size_t(N - N / 5));  // rows and keys left out of the second part are not in it
  keys.resize(size_t(M - M / 4));
  std::vector<char> row_in(size_t(N), 0), key_in(size_t(M), 0);
  for (int64_t i : rows) row_in[size_t(i)] = 1;
  for (int64_t j : keys) key_in[size_t(j)] = 1;
  auto second = [=](int64_t i, int64_t j) {
    return row_in[size_t(i)] && key_in[size_t(j)] && in_second(i, j);
  };
  t.parts.push_back(std::make_shared<const BlockSparseLayout>(kernels::build_layout(
      N, M, block, 2, [=](int64_t h, int64_t i, int64_t j) { return whole(h, i, j) && !second(i, j); })));
  t.parts.push_back(std::make_shared<const BlockSparseLayout>(kernels::build_layout(
      N, M, block, 2, [=](int64_t h, int64_t i, int64_t j) { return whole(h, i, j) && second(i, j); }, {},
      rows, keys)));
  return t;
}

TEST(BlockSparse, ReorderedPartsEqualTheDenseSoftmaxOverTheirUnion) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, d = 8;
  for (const auto& [N, M, block] :
       {std::tuple<int64_t, int64_t, int64_t>{70, 70, 16}, {40, 90, 32}, {90, 40, 8}}) {
    SCOPED_TRACE(seed.str() + " N=" + std::to_string(N) + " M=" + std::to_string(M));
    const TwoParts t = two_parts(seed.value + uint64_t(N), N, M, block);
    Tensor q = leaf(normal({B, H, N, d}, gen)), k = leaf(normal({B, H, M, d}, gen)),
           v = leaf(normal({B, H, M, d}, gen)), g = normal({B, H, N, d}, gen);
    AttentionOptions opts;
    opts.key_mask = Tensor::zeros({B, M}, DType::Bool);
    for (int64_t j = 0; j < M; ++j)
      opts.key_mask.data<bool>()[j] = true, opts.key_mask.data<bool>()[M + j] = j % 4 != 1;
    Tensor out = block_sparse_attention(q, k, v, opts, t.parts);
    backward(out, g);
    std::vector<char> allowed(size_t(B * H * N * M));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < M; ++j)
            allowed[size_t(((b * H + h) * N + i) * M + j)] =
                t.whole(h, i, j) && opts.key_mask.data<bool>()[b * M + j];
    const Dense r = dense_reference(values(q), values(k), values(v), values(g), allowed, B * H, N, M, d,
                                    1.0 / std::sqrt(double(d)));
    expect_near_all(values(out), r.out, 1e-5, "forward");
    expect_near_all(values(grad(q)), r.dq, 1e-4, "grad q");
    expect_near_all(values(grad(k)), r.dk, 1e-4, "grad k");
    expect_near_all(values(grad(v)), r.dv, 1e-4, "grad v");
  }
}

TEST(BlockSparse, ReorderedPartsDropWhatOnePartDropsOnAnyThreadCount) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t N = 100, M = 100;
  const TwoParts t = two_parts(seed.value, N, M, 16);
  auto one = std::make_shared<const BlockSparseLayout>(kernels::build_layout(N, M, 32, 2, t.whole));
  Tensor q = normal({1, 2, N, 8}, gen), k = normal({1, 2, M, 8}, gen), v = normal({1, 2, M, 8}, gen),
         g = normal({1, 2, N, 8}, gen);
  const int before = parallel::num_threads();
  auto run = [&](const std::vector<std::shared_ptr<const BlockSparseLayout>>& parts, int threads) {
    parallel::set_num_threads(threads);
    rng::manual_seed(seed.value);
    Tensor ql = leaf(q.clone_data()), kl = leaf(k.clone_data()), vl = leaf(v.clone_data());
    AttentionOptions opts;
    opts.dropout = 0.3f;
    Tensor out = block_sparse_attention(ql, kl, vl, opts, parts);
    backward(out, g);
    return std::vector<std::vector<float>>{values(out), values(grad(ql)), values(grad(kl)), values(grad(vl))};
  };
  const auto split1 = run(t.parts, 1), split2 = run(t.parts, 2), whole = run({one}, 2);
  parallel::set_num_threads(before);
  for (size_t n = 0; n < split1.size(); ++n) {
    EXPECT_EQ(split1[n], split2[n]) << seed.str() << ": tensor " << n;
    for (size_t i = 0; i < whole[n].size(); ++i)
      ASSERT_NEAR(split1[n][i], whole[n][i], 2e-4 * std::max(1.0f, std::abs(whole[n][i])))
          << seed.str() << ": tensor " << n << " at " << i;
  }
}

TEST(BlockSparse, ErrorsNameTheArgument) {
  auto layout = std::make_shared<const BlockSparseLayout>(
      kernels::build_layout(8, 8, 4, 1, [](int64_t, int64_t, int64_t) { return true; }));
  Tensor q = Tensor::zeros({1, 1, 9, 4});
  expect_error<ShapeError>([&] { block_sparse_attention(q, q, q, {}, layout); },
                           {"layout is for n = 8", "[1, 1, 9, 4]"});
  expect_error<ValueError>([&] { block_sparse_attention(q, q, q, {}, nullptr); }, {"layout is null"});
  auto rule = [](int64_t, int64_t, int64_t) { return true; };
  expect_error<ValueError>([&] { kernels::build_layout(8, 8, 0, 1, rule); }, {"block = 0", ">= 1"});
  expect_error<ValueError>([&] { kernels::build_layout(8, 8, 4, 0, rule); }, {"heads = 0", ">= 1"});
  expect_error<ValueError>(
      [&] {
        kernels::build_layout(8, 8, 4, 1, rule, {}, {0, 8});
      },
      {"query_index holds 8", "[0, 8)"});
  expect_error<ValueError>(
      [&] {
        kernels::build_layout(8, 8, 4, 1, rule, {}, {}, {1, 1});
      },
      {"key_index holds 1 twice", "distinct"});
}

}  // namespace
}  // namespace eformer::attention
