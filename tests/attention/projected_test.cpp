// ProjectionSpec: the projections a family declares instead of re-deriving them (shared q/k as in
// Reformer, no q/k as in Synthesizer, q/k and v widths as in AFT), through a minimal subclass.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;

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

}  // namespace
}  // namespace eformer::attention
