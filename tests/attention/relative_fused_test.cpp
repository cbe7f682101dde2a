// Transformer-XL attention through the fused kernel (relative.h) against the computation it
// replaced, kept here as the oracle: the N x K content and position scores, the relative shift,
// softmax, dropout and the value product, composed of the library's ops. Forward and the gradients
// of q, k, v, r, u, w on fresh random inputs at sizes spanning several tiles (N not a multiple of the
// tile, M = 0, M > N, one query), with dropout (the same elements dropped), and the errors. The
// float64 PyTorch comparison of the paper's equations is tests/python/test_relative_fused.py.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/kernels/block_layout.h"
#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/attention/relative.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/rng.h"
#include "eformer/ops/dropout.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/relative_shift.h"
#include "eformer/ops/shape.h"
#include "eformer/ops/softmax.h"

namespace eformer::attention {
namespace {

Tensor materialized(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& r, const Tensor& u,
                    const Tensor& w, float scale, float p) {
  const int64_t B = q.size(0), H = q.size(1), d = q.size(3), K = k.size(2);
  Tensor content = matmul(add(q, reshape(u, {H, 1, d})), k, false, true);
  Tensor r_b = contiguous(expand(unsqueeze(r, 0), {B, H, K, d}));
  Tensor position = relative_shift(matmul(add(q, reshape(w, {H, 1, d})), r_b, false, true));
  Tensor probs = softmax(mul_scalar(add(content, position), scale), -1);
  if (p > 0.0f) probs = dropout(probs, p, true);
  return matmul(probs, v);
}

using Fn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      float, float);

// The output and the six gradients of fn for the upstream gradient `up`, from generator state st.
std::vector<std::vector<float>> run(Fn fn, const std::vector<Tensor>& in, float scale, float p, const Tensor& up,
                                    const rng::Generator::State& st) {
  rng::default_generator().set_state(st);
  std::vector<Tensor> x;
  for (const Tensor& t : in) x.push_back(testing::leaf(t));
  Tensor out = fn(x[0], x[1], x[2], x[3], x[4], x[5], scale, p);
  backward(out, up);
  std::vector<std::vector<float>> result{testing::values(out)};
  for (const Tensor& t : x) result.push_back(testing::values(grad(t)));
  return result;
}

TEST(RelativeFused, MatchesTheMaterializedComputationWithAndWithoutDropout) {
  const testing::Seed seed;
  rng::Generator gen(seed.value);
  struct Case {
    int64_t B, H, N, M, d;
    float p;
  };
  for (const Case& c : std::vector<Case>{{2, 2, 70, 0, 12, 0.0f},
                                         {1, 2, 65, 130, 16, 0.0f},
                                         {2, 1, 130, 67, 8, 0.3f},
                                         {1, 2, 1, 150, 20, 0.5f},
                                         {2, 2, 129, 129, 24, 0.1f}}) {
    SCOPED_TRACE(seed.str() + ": N " + std::to_string(c.N) + " M " + std::to_string(c.M) + " p " +
                 std::to_string(c.p));
    const int64_t K = c.N + c.M;
    const std::vector<Tensor> in{testing::normal({c.B, c.H, c.N, c.d}, gen), testing::normal({c.B, c.H, K, c.d}, gen),
                                 testing::normal({c.B, c.H, K, c.d}, gen), testing::normal({c.H, K, c.d}, gen),
                                 testing::normal({c.H, c.d}, gen), testing::normal({c.H, c.d}, gen)};
    const Tensor up = testing::normal({c.B, c.H, c.N, c.d}, gen);
    const float scale = float(1.0 / std::sqrt(double(c.d)));
    const rng::Generator::State st{seed.value + 1, 3, 17};
    const auto fused = run(&relative_attention, in, scale, c.p, up, st);
    const auto oracle = run(&materialized, in, scale, c.p, up, st);
    const char* names[] = {"out", "dq", "dk", "dv", "dr", "du", "dw"};
    for (size_t n = 0; n < fused.size(); ++n) {
      std::vector<double> expected(oracle[n].begin(), oracle[n].end());
      testing::expect_near_all(fused[n], expected, 2e-4, names[n]);
    }
  }
}

TEST(RelativeFused, Errors) {
  const Tensor q = Tensor::zeros({1, 2, 3, 4}), kv = Tensor::zeros({1, 2, 5, 4}), r = Tensor::zeros({2, 5, 4}),
               uw = Tensor::zeros({2, 4});
  testing::expect_error<ShapeError>([&] { relative_attention(q, kv, kv, Tensor::zeros({2, 4, 4}), uw, uw, 1.0f); },
                                    {"relative_attention", "r Tensor"});
  testing::expect_error<ShapeError>([&] { relative_attention(kv, q, q, r, uw, uw, 1.0f); },
                                    {"the N queries are the last N of the K keys"});
  testing::expect_error<ValueError>([&] { relative_attention(q, kv, kv, r, uw, uw, 1.0f, 1.0f); }, {"dropout"});
  // The kernel's position bias is causal only.
  auto layout = std::make_shared<const kernels::BlockSparseLayout>(
      kernels::build_layout(3, 5, 64, 1, [](int64_t, int64_t, int64_t) { return true; }));
  testing::expect_error<ValueError>(
      [&] { block_sparse_attention(q, kv, kv, AttentionOptions{}, layout, PositionScoreBias{q, r}); },
      {"causal"});
}

}  // namespace
}  // namespace eformer::attention
