// Routing attention (kernels/routing.h, mechanisms/routing.h): what the Python parity tests do not
// reach. Bad options and inputs, the nearest-centroid routine (row by row = in tiles), identical bits
// on 1 and 2 threads at B H = 1, the moving average (after the forward, once per forward even under
// recomputation, never in evaluation) and memory that grows linearly in N at a fixed window. The
// forward and gradients against float64 PyTorch are in tests/python/test_attention_routing.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "routing_test_util.h"
#include "eformer/attention/kernels/routing.h"
#include "eformer/attention/mechanisms/routing.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

MechanismConfig routing_config(nlohmann::json options, int64_t max_len = 256, bool causal = true) {
  MechanismConfig c;
  c.d_model = 32;
  c.n_heads = 4;
  c.causal = causal;
  c.max_len = max_len;
  c.options = options.is_null() ? nlohmann::json::object() : std::move(options);
  return c;
}

using testing_routing::buffer;

TEST(RoutingOptions, BadValuesAreErrorsNamingThem) {
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"clusters", 0}})); }, {"clusters"});
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"window", 0}})); }, {"window"});
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"decay", 1.5}})); },
                           {"decay = 1.5", "0 <= decay <= 1"});
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"decay", "slow"}})); }, {"decay"});
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"local_heads", 5}})); },
                           {"local_heads = 5", "n_heads = 4"});
  expect_error<ValueError>([] { make_mechanism("routing", routing_config({{"window", 8}}, 0)); },
                           {"'routing'", "max_len", "clusters"});
  MechanismConfig cross = routing_config({});
  cross.causal = false, cross.cross = true;
  expect_error<ValueError>([&] { make_mechanism("routing", cross); }, {"cross"});
  MechanismConfig dropout = routing_config({});
  dropout.dropout = 0.1f;
  expect_error<ValueError>([&] { make_mechanism("routing", dropout); }, {"no attention probabilities"});
  // The default: round(max_len / window) clusters, at least 1.
  auto m = std::dynamic_pointer_cast<RoutingAttention>(make_mechanism("routing", routing_config({}, 1024)));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->clusters(), 16);
  EXPECT_EQ(buffer(*m, "centroids").shape(), (Shape{4, 16, 8}));
  m = std::dynamic_pointer_cast<RoutingAttention>(make_mechanism("routing", routing_config({}, 20)));
  EXPECT_EQ(m->clusters(), 1);
}

TEST(RoutingFunctional, BadInputsAreErrorsNamingThem) {
  rng::Generator gen(1);
  Tensor q = normal({1, 2, 10, 8}, gen), mu = normal({2, 3, 8}, gen);
  MechanismArgs args;
  expect_error<ValueError>([&] { attention(q, q, q, "routing", {}, args); }, {"centroids"});
  args.tensors["centroids"] = normal({2, 3, 4}, gen);
  expect_error<ShapeError>([&] { attention(q, q, q, "routing", {}, args); }, {"centroids", "[2, c, 8]"});
  args.tensors["centroids"] = mu;
  args.options = {{"local_heads", 3}};
  expect_error<ValueError>([&] { attention(q, q, q, "routing", {}, args); }, {"local_heads = 3"});
  args.options = {{"clusters", 3}};
  expect_error<ValueError>([&] { attention(q, q, q, "routing", {}, args); }, {"unknown option 'clusters'"});
  args.options = nlohmann::json::object();
  args.tensors["rotations"] = mu;
  expect_error<ValueError>([&] { attention(q, q, q, "routing", {}, args); }, {"rotations"});
}

TEST(RoutingKernel, NearestCentroidRowByRowEqualsTiles) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t n = 300, d = 24, c = 37;
  Tensor x = normal({n, d}, gen), mu = normal({c, d}, gen);
  std::vector<int32_t> tiled(n), one(1);
  kernels::nearest_centroid_rows(x.data<float>(), n, d, mu.data<float>(), c, tiled.data());
  std::vector<int64_t> used(c, 0);
  for (int64_t i = 0; i < n; ++i) {
    kernels::nearest_centroid_rows(x.data<float>() + i * d, 1, d, mu.data<float>(), c, one.data());
    EXPECT_EQ(one[0], tiled[size_t(i)]) << seed.str() << " row " << i;  // the streaming step routes so
    // ...and it is the argmax.
    const float* xi = x.data<float>() + i * d;
    double best = -1e30;
    int64_t arg = -1;
    for (int64_t j = 0; j < c; ++j) {
      double dot = 0;
      for (int64_t t = 0; t < d; ++t) dot += double(xi[t]) * mu.data<float>()[j * d + t];
      if (dot > best) best = dot, arg = j;
    }
    EXPECT_EQ(tiled[size_t(i)], arg) << seed.str() << " row " << i;
    ++used[size_t(tiled[size_t(i)])];
  }
  EXPECT_GE(std::count_if(used.begin(), used.end(), [](int64_t u) { return u > 0; }), c / 2) << seed.str();
}

// The functional form at window w, causal or not.
testing_routing::Attend routing_at(int64_t window, bool causal) {
  return [=](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mu) {
    AttentionOptions opts;
    opts.causal = causal;
    return routing_attention(q, k, v, mu, window, 0, opts);
  };
}

TEST(RoutingKernel, IdenticalBitsOnOneAndTwoThreadsAtOneHead) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 1, H = 1, N = 1000, d = 24;  // B H = 1: the sorted chunks run in parallel
  Tensor q = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen), g = normal({B, H, N, d}, gen),
         mu = normal({H, 8, d}, gen);
  for (bool causal : {false, true}) {
    auto one = testing_routing::on_threads(routing_at(16, causal), q, v, mu, g, 1),
         two = testing_routing::on_threads(routing_at(16, causal), q, v, mu, g, 2);
    for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << " tensor " << i;
  }
}

TEST(RoutingKernel, MemoryGrowsLinearlyInNAtAFixedWindow) {
  const int64_t small = testing_routing::peak_bytes(routing_at(32, true), 4096),
                large = testing_routing::peak_bytes(routing_at(32, true), 16384);
  EXPECT_LT(double(large) / double(small), 4.6) << small << " -> " << large;
}

// One training forward and backward of `m` on x; its output, input gradient, and the centroids after.
struct Pass {
  std::vector<float> y, dx, centroids;
  bool operator==(const Pass&) const = default;
};
Pass train_pass(Mechanism& m, const Tensor& x, const Tensor& g, bool recompute, uint64_t seed) {
  rng::manual_seed(seed);
  m.zero_grad();
  Tensor xl = leaf(x);
  auto fn = [&](const std::vector<Tensor>& in) { return m.forward(in[0]); };
  Tensor y = recompute ? autograd::checkpoint(fn, {xl}) : fn({xl});
  backward(y, g);
  return {values(y), values(grad(xl)), values(buffer(m, "centroids"))};
}

TEST(RoutingMechanism, CentroidsMoveOnceAfterEachTrainingForward) {
  rng::Generator gen(9);
  Tensor x = normal({2, 30, 32}, gen), g = normal({2, 30, 32}, gen);
  const nlohmann::json options = {{"clusters", 3}, {"window", 4}, {"decay", 0.5}, {"local_heads", 1}, {"seed", 4}};
  rng::manual_seed(1);  // the same projections in both
  auto plain = make_mechanism("routing", routing_config(options));
  rng::manual_seed(1);
  auto recomputed = make_mechanism("routing", routing_config(options));
  const std::vector<float> initial = values(buffer(*plain, "centroids"));
  // Evaluation routes without learning.
  plain->eval();
  plain->forward(x);
  EXPECT_EQ(values(buffer(*plain, "centroids")), initial);
  plain->train(), recomputed->train();
  // Under autograd::checkpoint the forward runs twice (the recompute in backward): same outputs and
  // gradients as the plain pass, and the centroids updated once, as there.
  const Pass a = train_pass(*plain, x, g, false, 17), b = train_pass(*recomputed, x, g, true, 17);
  EXPECT_EQ(a, b);
  EXPECT_NE(a.centroids, initial);
  // The update is the moving average of the assigned keys: centroids stay unit length; the local
  // head's (the last) stay as they were.
  const int64_t per_head = 3 * 8;
  for (int64_t r = 0; r < 4 * 3; ++r) {
    double sq = 0;
    for (int64_t t = 0; t < 8; ++t) sq += double(a.centroids[size_t(r * 8 + t)]) * a.centroids[size_t(r * 8 + t)];
    EXPECT_NEAR(sq, 1.0, 1e-5) << "centroid " << r;
  }
  EXPECT_EQ(std::vector<float>(a.centroids.begin() + 3 * per_head, a.centroids.end()),
            std::vector<float>(initial.begin() + 3 * per_head, initial.end()));
  // A second step (another generator state) moves them again; the same state again is a replay.
  const Pass next = train_pass(*plain, x, g, false, 18);
  EXPECT_NE(next.centroids, a.centroids);
  EXPECT_EQ(train_pass(*plain, x, g, false, 18), next);
  // decay = 1 freezes them.
  auto frozen = make_mechanism("routing", routing_config({{"clusters", 3}, {"decay", 1.0}, {"seed", 4}}));
  frozen->train();
  const std::vector<float> before = values(buffer(*frozen, "centroids"));
  EXPECT_EQ(train_pass(*frozen, x, g, false, 3).centroids, before);
}

}  // namespace
}  // namespace eformer::attention
