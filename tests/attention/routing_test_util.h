// Helpers shared by the routing tests (routing_test.cpp: balance "nearest"; routing_top_test.cpp: "top").
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention::testing_routing {

// The buffer `name` of a mechanism's state (empty if none).
inline Tensor buffer(const Mechanism& m, const std::string& name) {
  for (const auto& [n, t] : m.state_dict())
    if (n == name) return t;
  return {};
}

// attend(q, k = q, v, centroids) -> the attention output [B, H, N, d].
using Attend = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>;

// Forward and the gradients of q (= k) and v for upstream g, on `threads` threads.
inline std::vector<std::vector<float>> on_threads(const Attend& attend, const Tensor& q, const Tensor& v,
                                                  const Tensor& mu, const Tensor& g, int threads) {
  const int before = parallel::num_threads();
  parallel::set_num_threads(threads);
  Tensor ql = testing::leaf(q), vl = testing::leaf(v);
  Tensor out = attend(ql, ql, vl, mu);
  backward(out, g);
  parallel::set_num_threads(before);
  return {testing::values(out), testing::values(grad(ql)), testing::values(grad(vl))};
}

// The allocator's peak over a forward and backward at length N (inputs included), B = 1, H = 2, d = 32,
// N / 32 centroids.
inline int64_t peak_bytes(const Attend& attend, int64_t N) {
  rng::Generator gen(1);
  const int64_t H = 2, d = 32;
  Tensor q = testing::leaf(testing::normal({1, H, N, d}, gen)),
         v = testing::leaf(testing::normal({1, H, N, d}, gen));
  Tensor mu = testing::normal({H, N / 32, d}, gen), g = testing::normal({1, H, N, d}, gen);
  allocator::reset_peak();
  const int64_t live = allocator::stats().live_bytes;
  backward(attend(q, q, v, mu), g);
  return allocator::stats().peak_bytes - live;
}

}  // namespace eformer::attention::testing_routing
