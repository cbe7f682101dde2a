// The fused Sinkhorn kernels (attention/kernels/sinkhorn.h) against the op-by-op autograd graphs they
// replace: the permutation (block sums, SortNet, Gumbel noise, temperature, balancing), the sorted
// blocks written beside the local keys (with P dense, strictly lower, or fewer rows: SortCut) and the
// per-block softmax over [sorted block; own block], forward and every gradient. The float64 PyTorch checks of
// the whole attention are in tests/python/test_attention_sinkhorn.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../test_util.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/attention/mechanisms/sinkhorn.h"
#include "eformer/eformer.h"

namespace eformer::kernels {
namespace {

using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

// Every element within tol * max(1, max |expected|).
void expect_close(const Tensor& actual, const Tensor& expected, float tol, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = values(actual), e = values(expected);
  float scale = 1;
  for (float x : e) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], e[i], tol * scale) << what << " at " << i;
}

TEST(SinkhornKernels, SortedThenLocalMatchesMatmulAndCat) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, n = 5, b = 3, d = 4, N = 14;
  for (const auto& [rows, lower] : {std::pair<int64_t, bool>{n, false}, {n, true}, {2, false}}) {
    Tensor P = normal({B, H, rows, n}, gen);
    if (lower)  // the causal permutation: P_rj = 0 for j >= r
      for (int64_t e = 0; e < P.numel(); ++e)
        if (e % n >= (e / n) % rows) P.data<float>()[e] = 0.f;
    const Tensor blocks = normal({B, H, n * b, d}, gen), local = normal({B, H, N, d}, gen);
    const Tensor g = normal({B, H, rows * b + N, d}, gen);
    Tensor P1 = leaf(P), X1 = leaf(blocks), L1 = leaf(local);
    Tensor ours = sorted_then_local(P1, X1, L1, b, lower);
    backward(ours, g);
    Tensor P2 = leaf(P), X2 = leaf(blocks), L2 = leaf(local);
    Tensor sorted = reshape(matmul(P2, reshape(X2, {B, H, n, b * d})), {B, H, rows * b, d});
    Tensor theirs = cat({sorted, L2}, 2);
    backward(theirs, g);
    const std::string what = "rows " + std::to_string(rows) + (lower ? " lower " : " ") + seed.str();
    expect_close(ours, theirs, 1e-5f, "output, " + what);
    expect_close(grad(X1), grad(X2), 1e-5f, "d blocks, " + what);
    expect_close(grad(L1), grad(L2), 0.f, "d local, " + what);
    Tensor dP = grad(P2).clone_data();
    if (lower)  // entries where P is 0 by construction get no gradient from the kernel
      for (int64_t e = 0; e < dP.numel(); ++e)
        if (e % n >= (e / n) % rows) dP.data<float>()[e] = 0.f;
    expect_close(grad(P1), dP, 1e-5f, "dP, " + what);
  }
}

// The permutation as the op graph computed it before the fused kernel (mechanisms/sinkhorn.cpp).
Tensor permutation_by_ops(const Tensor& blocks, int64_t b, const Tensor& w1, const Tensor& b1,
                          const Tensor& w2, const Tensor& b2, const Tensor& gumbel, int64_t iterations,
                          float temperature, bool causal) {
  const int64_t H = blocks.size(1), n = blocks.size(2) / b, d = blocks.size(3);  // batch 1
  Tensor psi = sum(reshape(blocks, {1, H, n, b, d}), {3});
  if (causal) psi = cat({Tensor::zeros({1, H, 1, d}), contiguous(slice(psi, 2, 0, n - 1))}, 2);
  Tensor hidden = relu(add(matmul(reshape(psi, {H, n, d}), w1), unsqueeze(b1, 1)));
  Tensor R = add(matmul(hidden, w2), unsqueeze(b2, 1));  // [H, n, n_max]
  Tensor logits = add(reshape(contiguous(slice(R, 2, 0, n)), {1, H, n, n}), gumbel);
  return attention::sinkhorn_balance(mul_scalar(logits, 1.0f / temperature), iterations, causal);
}

TEST(SinkhornKernels, PermutationMatchesTheOpGraphWithEveryGradient) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t H = 3, b = 2, d = 4, hidden = 5, iterations = 5;
  const float temperature = 0.75f;
  // n = 19: the bidirectional balancing's rows as whole vectors and a tail (sinkhorn_balance.cpp)
  for (const auto& [n, causal] : {std::pair<int64_t, bool>{6, false}, {6, true}, {19, false}}) {
    const int64_t n_max = n + 2;
    const std::vector<Tensor> inputs = {
        normal({1, H, n * b, d}, gen, 0.5f),   normal({H, d, hidden}, gen, 0.5f), normal({H, hidden}, gen),
        normal({H, hidden, n_max}, gen, 0.5f), normal({H, n_max}, gen),           normal({1, H, n, n}, gen)};
    const Tensor g = normal({1, H, n, n}, gen);
    std::vector<Tensor> a, e;
    for (const Tensor& t : inputs) a.push_back(leaf(t)), e.push_back(leaf(t));
    Tensor ours = sinkhorn_permutation(a[0], b, a[1], a[2], a[3], a[4], a[5],
                                       {n, iterations, 1.0f / temperature, causal});
    backward(ours, g);
    Tensor theirs =
        permutation_by_ops(e[0], b, e[1], e[2], e[3], e[4], e[5], iterations, temperature, causal);
    backward(theirs, g);
    const std::string what =
        std::string(causal ? "causal, " : "bidirectional, ") + "n " + std::to_string(n) + ", " + seed.str();
    expect_close(ours, theirs, 1e-5f, "P, " + what);
    const char* names[] = {"d blocks", "d w1", "d b1", "d w2", "d b2", "d gumbel"};
    for (size_t i = 0; i < inputs.size(); ++i)
      expect_close(grad(a[i]), grad(e[i]), 2e-4f, names[i] + (", " + what));
  }
}

// Query block r's softmax over [sorted block r; block r] by ops: scores [B, H, n, b, 2 b], masked (causal:
// later keys of the own block, and all of block 0's sorted block), softmax, times the values.
Tensor block_attention_by_ops(const Tensor& q, const Tensor& keys, const Tensor& values, int64_t b,
                              float scale, bool causal) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), n = N / b;
  auto per_block = [&](const Tensor& kv) {  // [B, H, 2 N, d] -> [B, H, n, 2 b, d]
    return cat({reshape(narrow(kv, 2, 0, N), {B, H, n, b, d}), reshape(narrow(kv, 2, N, N), {B, H, n, b, d})},
               3);
  };
  Tensor scores = mul_scalar(matmul(reshape(q, {B, H, n, b, d}), transpose(per_block(keys), 3, 4)), scale);
  if (causal) {
    Tensor hidden = Tensor::zeros({n, b, 2 * b}, DType::Bool);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < 2 * b; ++j)
          hidden.data<bool>()[(r * b + i) * 2 * b + j] = j < b ? r == 0 : j - b > i;
    scores = masked_fill(scores, hidden, -1e30f);
  }
  return reshape(matmul(softmax(scores, -1), per_block(values)), {B, H, N, d});
}

// mixed_block_attention against its parts by ops: the sorted blocks P K and P V by matmul, beside K and V,
// into the per-block softmax; b = d = 16 and n = 5 (the tile GEMMs, the mixing in one chunk per head) and
// b = 3, d = 5 (oneDNN for the products the tiles cannot take).
TEST(SinkhornKernels, MixedBlockAttentionMatchesTheMixingThenTheAttention) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2;
  const float scale = 0.7f;
  for (const auto& [n, b, d] : {std::tuple<int64_t, int64_t, int64_t>{5, 16, 16}, {4, 3, 5}})
    for (bool causal : {false, true}) {
      const int64_t N = n * b;
      Tensor P = normal({B, H, n, n}, gen);
      if (causal)  // the causal permutation: P_rj = 0 for j >= r
        for (int64_t e = 0; e < P.numel(); ++e)
          if (e % n >= (e / n) % n) P.data<float>()[e] = 0.f;
      const std::vector<Tensor> inputs = {normal({B, H, N, d}, gen), normal({B, H, N, d}, gen),
                                          normal({B, H, N, d}, gen), P};
      const Tensor g = normal({B, H, N, d}, gen);
      std::vector<Tensor> a, e;
      for (const Tensor& t : inputs) a.push_back(leaf(t)), e.push_back(leaf(t));
      Tensor ours = mixed_block_attention(a[0], a[1], a[2], a[3], b, scale, causal);
      backward(ours, g);
      auto beside = [&](const Tensor& x) {  // [P X; X]
        return cat({reshape(matmul(e[3], reshape(x, {B, H, n, b * d})), {B, H, N, d}), x}, 2);
      };
      Tensor theirs = block_attention_by_ops(e[0], beside(e[1]), beside(e[2]), b, scale, causal);
      backward(theirs, g);
      const std::string what = std::string(causal ? "causal" : "bidirectional") + ", b " + std::to_string(b) +
                               ", d " + std::to_string(d) + ", " + seed.str();
      expect_close(ours, theirs, 1e-5f, "output, " + what);
      Tensor dP = grad(e[3]).clone_data();
      if (causal)  // entries where P is 0 by construction get no gradient from the kernel
        for (int64_t i = 0; i < dP.numel(); ++i)
          if (i % n >= (i / n) % n) dP.data<float>()[i] = 0.f;
      const char* names[] = {"dq", "dk", "dv"};
      for (size_t i = 0; i < 3; ++i) expect_close(grad(a[i]), grad(e[i]), 1e-5f, names[i] + (", " + what));
      expect_close(grad(a[3]), dP, 1e-5f, "dP, " + what);
    }
}

// sinkhorn_block_attention (one node) against its two nodes, sinkhorn_permutation of k then
// mixed_block_attention, forward and every gradient: dK is the attention's plus the block sums' (added in
// place by the one node, by autograd for the two), with Gumbel noise and without; b = d = 16 (the tile GEMMs)
// and b = 3, d = 5 (oneDNN), B = 2 so that the SortNet's gradients sum over the batch; n = 130 blocks of 2:
// several mixing items per head (dK += P^T dK_sorted after the permutation's backward, not inside it).
TEST(SinkhornKernels, OneNodeMatchesThePermutationThenTheMixedAttention) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, hidden = 6, iterations = 4;
  const float scale = 0.7f, inv_temperature = 1 / 0.75f;
  for (const auto& [n, b, d] : {std::tuple<int64_t, int64_t, int64_t>{5, 16, 16}, {4, 3, 5}, {130, 2, 3}})
    for (bool causal : {false, true})
      for (bool noise : {false, true}) {
        const int64_t N = n * b, n_max = n + 1;
        const std::vector<Tensor> inputs = {normal({B, H, N, d}, gen), normal({B, H, N, d}, gen, 0.3f),
                                            normal({B, H, N, d}, gen), normal({H, d, hidden}, gen, 0.5f),
                                            normal({H, hidden}, gen),  normal({H, hidden, n_max}, gen, 0.5f),
                                            normal({H, n_max}, gen),   normal({B, H, n, n}, gen)};
        const Tensor g = normal({B, H, N, d}, gen);
        std::vector<Tensor> a, e;
        for (const Tensor& t : inputs) a.push_back(leaf(t)), e.push_back(leaf(t));
        const SinkhornSortSizes sizes{n, iterations, inv_temperature, causal};
        Tensor ours = sinkhorn_block_attention(a[0], a[1], a[2], {a[3], a[4], a[5], a[6]},
                                               noise ? a[7] : Tensor(), sizes, b, scale);
        backward(ours, g);
        Tensor P = sinkhorn_permutation(e[1], b, e[3], e[4], e[5], e[6], noise ? e[7] : Tensor(), sizes);
        Tensor theirs = mixed_block_attention(e[0], e[1], e[2], P, b, scale, causal);
        backward(theirs, g);
        const std::string what = std::string(causal ? "causal" : "bidirectional") +
                                 (noise ? ", gumbel" : "") + ", b " + std::to_string(b) + ", d " +
                                 std::to_string(d) + ", " + seed.str();
        expect_close(ours, theirs, 1e-5f, "output, " + what);
        const char* names[] = {"dq", "dk", "dv", "d w1", "d b1", "d w2", "d b2", "d gumbel"};
        for (size_t i = 0; i < (noise ? 8u : 7u); ++i)
          expect_close(grad(a[i]), grad(e[i]), 1e-5f, names[i] + (", " + what));
      }
}

TEST(SinkhornKernels, RejectShapesThatDoNotFit) {
  const Tensor P = Tensor::zeros({1, 2, 3, 3}), blocks = Tensor::zeros({1, 2, 8, 4}),
               local = Tensor::zeros({1, 2, 9, 4});
  testing::expect_error<ShapeError>([&] { sorted_then_local(P, blocks, local, 3, false); },
                                    {"sorted_then_local", "do not fit block 3"});
  const Tensor w1 = Tensor::zeros({2, 4, 5}), b1 = Tensor::zeros({2, 5}), w2 = Tensor::zeros({2, 5, 2}),
               b2 = Tensor::zeros({2, 2});
  testing::expect_error<ShapeError>(
      [&] {
        sinkhorn_permutation(Tensor::zeros({1, 2, 9, 4}), 3, w1, b1, w2, b2, {}, {3, 8, 1.f, false});
      },
      {"sinkhorn_permutation", "do not fit"});
  testing::expect_error<ShapeError>(
      [&] {
        mixed_block_attention(local, local, local, Tensor::zeros({1, 2, 2, 3}), 3, 1.f, false);
      },
      {"mixed_block_attention", "expected k and v as q and P [1, 2, 3, 3]"});
}

}  // namespace
}  // namespace eformer::kernels
