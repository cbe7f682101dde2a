// ProjectionSpec: the projections a family declares instead of re-deriving them (shared q/k as in
// Reformer, no q/k as in Synthesizer, q/k and v widths as in AFT), through a minimal subclass.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "../test_util.h"
#include "eformer/attention/kernels/head_projection.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::values;

// Exposes project() and output(): mix = output(v) (the heads' values, merged and projected).
class Probe : public ProjectedAttention {
 public:
  Probe(const MechanismConfig& c, const ProjectionSpec& spec)
      : ProjectedAttention("Probe", "flash", c, {}, spec) {}
  Heads heads(const Tensor& x) { return project(x, {}); }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor&) override {
    return output(project(x, memory).v);
  }
};

std::set<std::string> names(const nn::Module& m) {
  std::set<std::string> out;
  for (const auto& [n, p] : m.named_parameters()) out.insert(n);
  return out;
}

MechanismConfig config() {
  MechanismConfig c;
  c.d_model = 16;
  c.n_heads = 2;
  c.causal = true;
  return c;
}

TEST(ProjectionSpec, SharedQueryKeyHasOneProjectionAndKEqualsQ) {
  Probe p(config(), {.shared_qk = true});
  EXPECT_EQ(names(p), (std::set<std::string>{"q_proj.weight", "q_proj.bias", "v_proj.weight", "v_proj.bias",
                                             "out_proj.weight", "out_proj.bias"}));
  Tensor x = Tensor::zeros({1, 3, 16});
  auto h = p.heads(x);
  EXPECT_TRUE(h.k.is_same(h.q));
}

TEST(ProjectionSpec, NoQueryKeyAndOwnWidths) {
  Probe p(config(), {.query_key = false, .v_width = 32});
  EXPECT_EQ(names(p),
            (std::set<std::string>{"v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias"}));
  Tensor x = Tensor::zeros({2, 5, 16});
  auto h = p.heads(x);
  EXPECT_FALSE(h.q.defined());
  EXPECT_EQ(h.v.shape(), (Shape{2, 2, 5, 16}));
  EXPECT_EQ(p.forward(x).shape(), (Shape{2, 5, 16}));
  Probe wide(config(), {.qk_width = 8});
  EXPECT_EQ(wide.heads(x).q.shape(), (Shape{2, 2, 5, 4}));
  expect_error<ValueError>([] { Probe bad(config(), {.qk_width = 7}); }, {"q/k width = 7", "n_heads = 2"});
}

// The fused head projections equal Linear followed by the head split (and the merge followed by
// Linear), forward and every gradient, in float64-checked ops' float results up to GEMM rounding.
TEST(HeadProjection, EqualsLinearAndSplitForwardAndGradients) {
  const int64_t B = 2, N = 5, D = 12, H = 3, w = 4;
  for (bool bias : {true, false}) {
    Tensor x = testing::leaf(testing::randn({B, N, D}, 1)), W = testing::leaf(testing::randn({H * w, D}, 2));
    Tensor b = bias ? testing::leaf(testing::randn({H * w}, 3)) : Tensor();
    Tensor g = testing::randn({B, H, N, w}, 4);
    Tensor fused = project_to_heads(x, W, b, H);
    backward(sum(mul(fused, g)));
    std::vector<std::vector<float>> got{values(fused), values(grad(x)), values(grad(W))};
    if (bias) got.push_back(values(grad(b)));
    for (const Tensor& t : {x, W}) zero_grad(t);
    if (bias) zero_grad(b);
    Tensor y = matmul(x, W, false, true);
    if (bias) y = add(y, b);
    Tensor plain = transpose(reshape(y, {B, N, H, w}), 1, 2);
    backward(sum(mul(plain, g)));
    std::vector<std::vector<float>> want{values(contiguous(plain)), values(grad(x)), values(grad(W))};
    if (bias) want.push_back(values(grad(b)));
    for (size_t i = 0; i < got.size(); ++i)
      for (size_t j = 0; j < got[i].size(); ++j) ASSERT_NEAR(got[i][j], want[i][j], 1e-4f) << i << " " << j;

    Tensor a = testing::leaf(testing::randn({B, H, N, w}, 5)), Wo = testing::leaf(testing::randn({D, H * w}, 6));
    Tensor bo = bias ? testing::leaf(testing::randn({D}, 7)) : Tensor();
    Tensor go = testing::randn({B, N, D}, 8);
    Tensor merged = project_from_heads(a, Wo, bo);
    backward(sum(mul(merged, go)));
    got = {values(merged), values(grad(a)), values(grad(Wo))};
    if (bias) got.push_back(values(grad(bo)));
    for (const Tensor& t : {a, Wo}) zero_grad(t);
    if (bias) zero_grad(bo);
    Tensor z = matmul(reshape(transpose(a, 1, 2), {B, N, H * w}), Wo, false, true);
    if (bias) z = add(z, bo);
    backward(sum(mul(z, go)));
    want = {values(z), values(grad(a)), values(grad(Wo))};
    if (bias) want.push_back(values(grad(bo)));
    for (size_t i = 0; i < got.size(); ++i)
      for (size_t j = 0; j < got[i].size(); ++j) ASSERT_NEAR(got[i][j], want[i][j], 1e-4f) << i << " " << j;
  }
  expect_error<ShapeError>([] { project_to_heads(Tensor::zeros({1, 2, 3}), Tensor::zeros({4, 3}), {}, 3); },
                           {"expected x [B, N, D], weight [H w, D]"});
  expect_error<ShapeError>([] { project_from_heads(Tensor::zeros({1, 2, 3, 4}), Tensor::zeros({5, 7}), {}); },
                           {"weight [D, H w]"});
}

}  // namespace
}  // namespace eformer::attention
