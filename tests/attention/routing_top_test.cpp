// Routing attention with balanced clusters (option balance "top", kernels/routing_top.h): what the
// Python parity tests (tests/python/test_attention_routing_top.py) do not reach. The selection is each
// centroid's top w against a float64 brute force; causal is refused naming the leak; the contract
// suite's checks for this option (the suite runs each mechanism at its defaults): identical bits on 1
// and 2 threads, padded keys change nothing at real queries, one centroid update per training forward
// under recomputation, a checkpoint round trip; memory linear in N at a fixed window.
#include "eformer/attention/kernels/routing_top.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/mechanisms/routing.h"
#include "eformer/eformer.h"
#include "routing_test_util.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

MechanismConfig top_config(nlohmann::json options, bool causal = false) {
  MechanismConfig c;
  c.d_model = 32;
  c.n_heads = 4;
  c.causal = causal;
  c.max_len = 64;
  c.options = std::move(options);
  c.options["balance"] = "top";
  return c;
}

using testing_routing::buffer;

TEST(RoutingTopOptions, CausalIsRefusedNamingTheLeak) {
  expect_error<ValueError>([] { make_mechanism("routing", top_config(nlohmann::json::object(), true)); },
                           {"balance = 'top'", "no causal form", "leak", "'nearest'"});
  MechanismConfig spread = top_config(nlohmann::json::object());
  spread.options["balance"] = "spread";
  expect_error<ValueError>([&] { make_mechanism("routing", spread); }, {"balance", "nearest", "top"});
  rng::Generator gen(1);
  Tensor q = normal({1, 2, 10, 8}, gen);
  MechanismArgs args;
  args.tensors["centroids"] = normal({2, 3, 8}, gen);
  args.options = {{"balance", "top"}};
  AttentionOptions causal;
  causal.causal = true;
  expect_error<ValueError>([&] { attention(q, q, q, "routing", causal, args); }, {"no causal form", "leak"});
  expect_error<ValueError>([&] { routing_top_attention(q, q, q, args.tensors["centroids"], 4, causal); },
                           {"no causal form", "leak"});
  // Bidirectional it is accepted, and says so.
  auto m = make_mechanism("routing", top_config({{"clusters", 3}}));
  EXPECT_NE(m->describe().find("balance=top"), std::string::npos) << m->describe();
}

TEST(RoutingTopKernel, MembersAreEachCentroidsTopWInPositionOrder) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, N = 70, d = 12, c = 19, w = 9;  // c > 16: two selection groups
  Tensor kn = normal({B * H, N, d}, gen), mu = normal({H, c, d}, gen);
  std::vector<char> mask(size_t(B * N), 1);
  for (int64_t i = 0; i < N; i += 4) mask[size_t(N + i)] = 0;  // sequence 1: every fourth token padded
  const int64_t n[2] = {w, w};
  kernels::TopSizes s{B, H, N, d, c, w, 1.0f};
  std::vector<int32_t> members(size_t(B * H * c * w));
  kernels::top_members(kn.data<float>(), mu.data<float>(), reinterpret_cast<const bool*>(mask.data()), n,
                       members.data(), s);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t j = 0; j < c; ++j) {
      std::vector<std::pair<double, int32_t>> sim;
      for (int64_t i = 0; i < N; ++i) {
        if (!mask[size_t(bh / H * N + i)]) continue;
        double dot = 0;
        for (int64_t x = 0; x < d; ++x)
          dot +=
              double(kn.data<float>()[(bh * N + i) * d + x]) * mu.data<float>()[((bh % H) * c + j) * d + x];
        sim.push_back({-dot, int32_t(i)});
      }
      std::sort(sim.begin(), sim.end());
      std::vector<int32_t> expected;
      for (int64_t i = 0; i < w; ++i) expected.push_back(sim[size_t(i)].second);
      std::sort(expected.begin(), expected.end());
      const int32_t* got = members.data() + (bh * c + j) * w;
      EXPECT_EQ(std::vector<int32_t>(got, got + w), expected)
          << seed.str() << " head " << bh << " cluster " << j;
    }
}

// The functional form at window w.
testing_routing::Attend top_at(int64_t window) {
  return [=](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mu) {
    return routing_top_attention(q, k, v, mu, window);
  };
}

TEST(RoutingTopKernel, IdenticalBitsOnOneAndTwoThreadsAtOneHead) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t N = 1000, d = 24;  // B H = 1: the clusters run in parallel; windows over and under 64 rows
  Tensor q = normal({1, 1, N, d}, gen), v = normal({1, 1, N, d}, gen), g = normal({1, 1, N, d}, gen);
  for (int64_t window : {40, 150}) {
    Tensor mu = normal({1, 20, d}, gen);
    auto one = testing_routing::on_threads(top_at(window), q, v, mu, g, 1),
         two = testing_routing::on_threads(top_at(window), q, v, mu, g, 2);
    for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << " tensor " << i;
  }
}

// One training forward and backward; its output, input gradient, parameter gradients and centroids after.
std::vector<std::vector<float>> train_pass(Mechanism& m, const Tensor& x, const Tensor& g, const Tensor& mask,
                                           bool recompute, uint64_t seed) {
  rng::manual_seed(seed);
  m.zero_grad();
  Tensor xl = leaf(x);
  auto fn = [&](const std::vector<Tensor>& in) { return m.forward(in[0], Tensor(), mask); };
  Tensor y = recompute ? autograd::checkpoint(fn, {xl}) : fn({xl});
  backward(y, g);
  std::vector<std::vector<float>> out{values(y), values(grad(xl)), values(buffer(m, "centroids"))};
  for (const auto& [name, p] : m.named_parameters()) out.push_back(values(grad(p)));
  return out;
}

const nlohmann::json kOptions = {
    {"clusters", 5}, {"window", 12}, {"decay", 0.5}, {"local_heads", 1}, {"seed", 4}};

TEST(RoutingTopMechanism, ContractChecksOfTheOption) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, N = 37, D = 32;
  Tensor x = normal({B, N, D}, gen), g = normal({B, N, D}, gen);
  Tensor mask = Tensor::zeros({B, N}, DType::Bool);
  for (int64_t j = 0; j < N; ++j) mask.data<bool>()[j] = true, mask.data<bool>()[N + j] = j % 3 != 2;
  rng::manual_seed(seed.value);
  auto plain = make_mechanism("routing", top_config(kOptions));
  rng::manual_seed(seed.value);
  auto twin = make_mechanism("routing", top_config(kOptions));
  plain->train(), twin->train();
  const std::vector<float> initial = values(buffer(*plain, "centroids"));
  // 1 and 2 threads, and under autograd::checkpoint (the forward runs twice): the same bits, one update.
  const int before = parallel::num_threads();
  parallel::set_num_threads(1);
  const auto one = train_pass(*plain, x, g, mask, false, 17);
  parallel::set_num_threads(2);
  const auto two = train_pass(*twin, x, g, mask, true, 17);
  parallel::set_num_threads(before);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << " tensor " << i;
  EXPECT_NE(one[2], initial) << "the centroids did not move";
  // Padded keys change nothing at the real queries.
  plain->eval();
  const std::vector<float> base = values(plain->forward(x, Tensor(), mask));
  Tensor changed = x.clone_data();
  for (int64_t j = 0; j < N; ++j)
    if (!mask.data<bool>()[N + j])
      for (int64_t c = 0; c < D; ++c) changed.data<float>()[(N + j) * D + c] *= -3.0f;
  const std::vector<float> after = values(plain->forward(changed, Tensor(), mask));
  for (int64_t i = 0; i < B * N; ++i) {
    if (!mask.data<bool>()[i]) continue;
    for (int64_t c = 0; c < D; ++c)
      ASSERT_NEAR(after[size_t(i * D + c)], base[size_t(i * D + c)], 1e-6) << seed.str() << " row " << i;
  }
  // A checkpoint round trip (centroids and parameters into a differently initialised twin).
  auto other = make_mechanism("routing", top_config({{"clusters", 5}, {"window", 12}, {"local_heads", 1}}));
  std::map<std::string, Tensor> state;
  for (const auto& [name, t] : plain->state_dict()) state[name] = t;
  other->load_state_dict(state);
  other->eval();
  EXPECT_EQ(values(other->forward(x, Tensor(), mask)), base);
}

TEST(RoutingTopKernel, MemoryGrowsLinearlyInNAtAFixedWindow) {
  const int64_t small = testing_routing::peak_bytes(top_at(32), 4096),
                large = testing_routing::peak_bytes(top_at(32), 16384);
  EXPECT_LT(double(large) / double(small), 4.6) << small << " -> " << large;
}

}  // namespace
}  // namespace eformer::attention
