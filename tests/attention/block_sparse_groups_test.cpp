// The block-sparse backward's key-block groups (kernels/block_sparse.h, backward_groups) at
// B H = 1, where every group is its own work item: identical bits on 1, 2 and 3 threads, gradients
// against a float64 softmax with partial last blocks and N != M, and the implicit dense layout
// (flash's) equal bit for bit to the same layout built with its pair lists.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using kernels::BlockSparseLayout;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

using Results = std::vector<std::vector<float>>;

// Output and gradients of block-sparse attention at B = H = 1 (causal, a key mask, dropout optional).
Results run(const std::shared_ptr<const BlockSparseLayout>& layout, const Tensor& q, const Tensor& k,
            const Tensor& v, const Tensor& g, const Tensor& key_mask, float dropout, uint64_t seed) {
  rng::manual_seed(seed);
  Tensor ql = leaf(q.clone_data()), kl = leaf(k.clone_data()), vl = leaf(v.clone_data());
  AttentionOptions opts;
  opts.causal = true;
  opts.key_mask = key_mask;
  opts.dropout = dropout;
  Tensor out = block_sparse_attention(ql, kl, vl, opts, layout);
  backward(out, g);
  return {values(out), values(grad(ql)), values(grad(kl)), values(grad(vl))};
}

struct Inputs {
  Tensor q, k, v, g, key_mask;
};
Inputs inputs(uint64_t seed, int64_t N, int64_t M, int64_t d) {
  rng::Generator gen(seed);
  Inputs in{normal({1, 1, N, d}, gen), normal({1, 1, M, d}, gen), normal({1, 1, M, d}, gen),
            normal({1, 1, N, d}, gen), Tensor::zeros({1, M}, DType::Bool)};
  for (int64_t j = 0; j < M; ++j) in.key_mask.data<bool>()[j] = j % 9 != 4;  // some keys padded
  return in;
}

TEST(BlockSparseGroups, SeveralGroupsAtOneHead) {
  // The tests below are only meaningful when B H = 1 splits the key blocks into several groups.
  EXPECT_GT(kernels::backward_groups(1, 10), 2);
  EXPECT_EQ(kernels::backward_groups(1, 3), 3);  // never more groups than key blocks
  EXPECT_EQ(kernels::backward_groups(64, 100), 1);
}

TEST(BlockSparseGroups, IdenticalBitsOnOneTwoAndThreeThreadsAtOneHead) {
  Seed seed;
  const int64_t N = 290, M = 317, d = 24, block = 32;  // partial last blocks, N != M, d padded
  const Inputs in = inputs(seed.value, N, M, d);
  auto sparse = std::make_shared<const BlockSparseLayout>(kernels::build_layout(
      N, M, block, 1, [](int64_t, int64_t i, int64_t j) { return (i * 7 + j * 3) % 5 != 0 || j % 32 == 1; }));
  auto dense = std::make_shared<const BlockSparseLayout>(kernels::dense_layout(N, M, block));
  ASSERT_GT(kernels::backward_groups(1, dense->nk), 2);
  const int before = parallel::num_threads();
  for (const auto& layout : {sparse, dense})
    for (float dropout : {0.0f, 0.25f}) {
      Results first;
      for (int threads : {1, 2, 3}) {
        parallel::set_num_threads(threads);
        const Results r = run(layout, in.q, in.k, in.v, in.g, in.key_mask, dropout, seed.value);
        if (threads == 1) first = r;
        for (size_t t = 0; t < r.size(); ++t)
          EXPECT_EQ(r[t], first[t]) << seed.str() << (layout->dense ? " dense" : " sparse") << " dropout "
                                    << dropout << " threads " << threads << " tensor " << t;
      }
    }
  parallel::set_num_threads(before);
}

TEST(BlockSparseGroups, GradientsMatchFloat64AtOneHead) {
  Seed seed;
  for (auto [N, M, block] : {std::tuple<int64_t, int64_t, int64_t>{300, 300, 32}, {211, 350, 32}, {350, 211, 64},
                             {700, 650, 128}}) {
    const int64_t d = 16;
    SCOPED_TRACE(seed.str() + " N=" + std::to_string(N) + " M=" + std::to_string(M) +
                 " block=" + std::to_string(block));
    const Inputs in = inputs(seed.value + uint64_t(N), N, M, d);
    auto layout = std::make_shared<const BlockSparseLayout>(kernels::dense_layout(N, M, block));
    const Results r = run(layout, in.q, in.k, in.v, in.g, in.key_mask, 0.0f, seed.value);
    // float64 softmax attention, causal (bottom-right aligned) with the key mask
    const std::vector<float> q = values(in.q), k = values(in.k), v = values(in.v), g = values(in.g);
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<double> out(static_cast<size_t>(N * d)), dq(static_cast<size_t>(N * d)), dk(static_cast<size_t>(M * d)),
        dv(static_cast<size_t>(M * d));
    std::vector<double> p(static_cast<size_t>(M)), dp(static_cast<size_t>(M));
    for (int64_t i = 0; i < N; ++i) {
      double mx = -INFINITY, sum = 0, dot = 0;
      for (int64_t j = 0; j < M; ++j) {
        p[j] = -INFINITY;
        if (!causal_allows(i, j, N, M) || !in.key_mask.data<bool>()[j]) continue;
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += double(q[i * d + c]) * k[j * d + c];
        mx = std::max(mx, p[j] = s * scale);
      }
      if (mx == -INFINITY) continue;
      for (int64_t j = 0; j < M; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx));
      for (int64_t j = 0; j < M; ++j) {
        p[j] /= sum;
        dp[j] = 0;
        for (int64_t c = 0; c < d; ++c) {
          out[i * d + c] += p[j] * v[j * d + c];
          dp[j] += double(g[i * d + c]) * v[j * d + c];
          dv[j * d + c] += p[j] * g[i * d + c];
        }
        dot += p[j] * dp[j];
      }
      for (int64_t j = 0; j < M; ++j) {
        const double ds = p[j] * (dp[j] - dot) * scale;
        for (int64_t c = 0; c < d; ++c) dq[i * d + c] += ds * k[j * d + c], dk[j * d + c] += ds * q[i * d + c];
      }
    }
    testing::expect_near_all(r[0], out, 1e-5, "forward");
    testing::expect_near_all(r[1], dq, 1e-4, "grad q");
    testing::expect_near_all(r[2], dk, 1e-4, "grad k");
    testing::expect_near_all(r[3], dv, 1e-4, "grad v");
  }
}

TEST(BlockSparseGroups, ImplicitDenseLayoutEqualsTheBuiltOne) {
  Seed seed;
  const int64_t N = 150, M = 170, d = 16, block = 32;
  const Inputs in = inputs(seed.value, N, M, d);
  auto built = std::make_shared<const BlockSparseLayout>(
      kernels::build_layout(N, M, block, 1, [](int64_t, int64_t, int64_t) { return true; }));
  auto dense = std::make_shared<const BlockSparseLayout>(kernels::dense_layout(N, M, block));
  EXPECT_EQ(dense->pairs(), built->pairs());
  EXPECT_EQ(dense->allowed_elements, built->allowed_elements);
  for (int64_t qb = 0; qb < built->nq; ++qb)
    for (int64_t e = built->row_begin(0, qb), f = dense->row_begin(0, qb); e < built->row_end(0, qb); ++e, ++f)
      EXPECT_EQ(built->row_key(e), dense->row_key(f));
  for (int64_t kb = 0; kb < built->nk; ++kb)
    for (int64_t e = built->col_begin(0, kb), f = dense->col_begin(0, kb); e < built->col_end(0, kb); ++e, ++f)
      EXPECT_EQ(built->col_query(e), dense->col_query(f));
  const Results a = run(built, in.q, in.k, in.v, in.g, in.key_mask, 0.1f, seed.value),
                b = run(dense, in.q, in.k, in.v, in.g, in.key_mask, 0.1f, seed.value);
  for (size_t t = 0; t < a.size(); ++t) EXPECT_EQ(a[t], b[t]) << seed.str() << ": tensor " << t;
}

}  // namespace
}  // namespace eformer::attention
