// narrow_attention (kernels/narrow_attention.h) against full_attention (the materialized reference, itself
// checked against float64 torch): outputs and the gradients of q, k, v at sizes whose query and key chunks
// leave remainders, causal and padded, with dropout from the same generator state. The float64 torch
// comparison is tests/python/test_attention_narrow.py; this one runs under the sanitizers.
#include <gtest/gtest.h>

#include <vector>

#include "eformer/attention/kernels/full.h"
#include "eformer/attention/kernels/narrow_attention.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "../test_util.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::expect_near_all;
using testing::leaf;
using testing::normal;
using testing::randn;
using testing::Seed;
using testing::values;

using AttentionFn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&);

// out, dq, dk, dv of fn on fresh leaves of q, k, v with upstream gradient g.
std::vector<std::vector<float>> run(AttentionFn fn, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& g, const AttentionOptions& o) {
  Tensor lq = leaf(q), lk = leaf(k), lv = leaf(v);
  rng::manual_seed(7);  // the same dropout draws for both kernels
  Tensor out = fn(lq, lk, lv, o);
  autograd::backward({out}, {g});
  return {values(out), values(grad(lq)), values(grad(lk)), values(grad(lv))};
}

TEST(NarrowAttention, AgreesWithFullWithGradients) {
  Seed seed;
  rng::Generator gen(seed.value);
  // 1200 x 70: two query chunks (936 rows + a remainder); 2000 x 300: the backward's dK, dV summed over two
  // groups of chunks (1744 rows + a remainder); 70 x 1200: few queries, long rows.
  for (auto [N, M] : {std::pair<int64_t, int64_t>{1200, 70}, {2000, 300}, {70, 1200}, {33, 9}, {1, 40}}) {
    for (bool causal : {false, true}) {
      for (float dropout : {0.0f, 0.25f}) {
        const int64_t B = 2, H = 1, d = 12;
        Tensor q = normal({B, H, N, d}, gen), k = normal({B, H, M, d}, gen), v = normal({B, H, M, d}, gen);
        Tensor g = normal({B, H, N, d}, gen);
        std::vector<bool> real(size_t(B * M), true);
        for (int64_t j = M / 2; j < M; ++j) real[size_t(M + j)] = false;  // the second sequence half padded
        AttentionOptions o;
        o.causal = causal, o.dropout = dropout;
        o.key_mask = Tensor::empty({B, M}, DType::Bool);
        for (int64_t i = 0; i < B * M; ++i) o.key_mask.data<bool>()[i] = real[size_t(i)];
        const auto a = run(narrow_attention, q, k, v, g, o), b = run(full_attention, q, k, v, g, o);
        const char* what[] = {"out", "dq", "dk", "dv"};
        for (size_t t = 0; t < 4; ++t) {
          std::vector<double> expected(b[t].begin(), b[t].end());
          expect_near_all(a[t], expected, 2e-5,
                          std::string(what[t]) + " N " + std::to_string(N) + " M " + std::to_string(M) +
                              (causal ? " causal" : "") + " dropout " + std::to_string(dropout) + ", " +
                              seed.str());
        }
      }
    }
  }
}

TEST(NarrowAttention, NamesTheOpInItsErrors) {
  Tensor q = randn({2, 2, 5, 8}, 1), k = randn({2, 2, 7, 8}, 2);
  expect_error<ShapeError>([&] { narrow_attention(q, k, randn({2, 2, 6, 8}, 3)); }, {"narrow_attention", "v is"});
}

}  // namespace
}  // namespace eformer::attention
