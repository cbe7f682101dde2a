// Axial attention (mechanisms/axial.h) beyond the contract suite: the pattern is the row (row heads) or
// the column (column heads) of each pixel, earlier pixels only when causal; the functional form with an
// explicit image_shape and a partial last row equals a float64 softmax over that pattern (forward and
// gradients, with padding); the causal module leaks nothing across rows and columns and streams no further
// than its image; bad layouts are errors.
// Inputs are drawn from a fresh seed each run ("[ seed ]"); EFORMER_TEST_SEED=<n> replays one.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/mechanisms/axial.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::expect_near_all;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

TEST(Axial, PatternIsTheRowOrTheColumnOfEachPixel) {
  const int64_t h = 4, w = 5, N = 18, heads = 3;  // rows 0-2 full, row 3 has 3 pixels
  MechanismArgs args;
  args.options = {{"image_shape", {h, w}}};
  for (bool causal : {false, true}) {
    const Tensor p = attention_pattern("axial", N, N, heads, causal, args);
    for (int64_t head = 0; head < heads; ++head)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          const bool line = head < 2 ? i / w == j / w : i % w == j % w;
          ASSERT_EQ(p.data<bool>()[(head * N + i) * N + j], line && (!causal || j <= i))
              << "head " << head << " i " << i << " j " << j << (causal ? " causal" : "");
        }
  }
}

// Float64 softmax over allowed (i, j) of head h, for q, k, v [B, H, N, d]: out and the gradients of sum(out g).
struct Dense {
  std::vector<double> out, dq, dk, dv;
};
Dense dense(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
            const std::vector<float>& g, const Tensor& pattern, const Tensor& mask, int64_t B, int64_t H, int64_t N,
            int64_t d) {
  Dense r;
  r.out.assign(B * H * N * d, 0), r.dq = r.out, r.dk = r.out, r.dv = r.out;
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> p(N), dp(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hh = 0; hh < H; ++hh)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t base = (b * H + hh) * N;
        double mx = -INFINITY;
        for (int64_t j = 0; j < N; ++j) {
          p[j] = -INFINITY;
          if (!pattern.data<bool>()[(hh * N + i) * N + j] || !mask.data<bool>()[b * N + j]) continue;
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += double(q[(base + i) * d + c]) * k[(base + j) * d + c];
          mx = std::max(mx, p[j] = s * scale);
        }
        if (mx == -INFINITY) continue;
        double sum = 0, dot = 0;
        for (int64_t j = 0; j < N; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx));
        for (int64_t j = 0; j < N; ++j) {
          p[j] /= sum, dp[j] = 0;
          for (int64_t c = 0; c < d; ++c) {
            r.out[(base + i) * d + c] += p[j] * v[(base + j) * d + c];
            dp[j] += double(g[(base + i) * d + c]) * v[(base + j) * d + c];
            r.dv[(base + j) * d + c] += p[j] * g[(base + i) * d + c];
          }
          dot += p[j] * dp[j];
        }
        for (int64_t j = 0; j < N; ++j)
          for (int64_t c = 0; c < d; ++c) {
            const double ds = p[j] * (dp[j] - dot) * scale;
            r.dq[(base + i) * d + c] += ds * k[(base + j) * d + c];
            r.dk[(base + j) * d + c] += ds * q[(base + i) * d + c];
          }
      }
  return r;
}

// N = 17 fills the 4 x 5 image partly (rows and columns gathered into lines), N = 20 wholly (the rows
// attended in place, axial_lines.h); H = 3 gives the rows one head more than the columns.
TEST(Axial, FunctionalFormWithAPartialOrFullImageMatchesTheFloat64Reference) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, d = 8;
  MechanismArgs args;
  args.options = {{"image_shape", {4, 5}}};
  for (const auto& [N, H] : {std::pair<int64_t, int64_t>{17, 4}, {20, 4}, {20, 3}})
    for (bool causal : {false, true})
      for (bool masked : {false, true}) {
        SCOPED_TRACE(seed.str() + " N " + std::to_string(N) + " H " + std::to_string(H) +
                     (causal ? " causal" : "") + (masked ? " masked" : ""));
        Tensor mask = Tensor::zeros({B, N}, DType::Bool);
        for (int64_t j = 0; j < N; ++j) mask.data<bool>()[j] = true, mask.data<bool>()[N + j] = j % 4 != 3;
        Tensor q = leaf(normal({B, H, N, d}, gen)), k = leaf(normal({B, H, N, d}, gen)),
               v = leaf(normal({B, H, N, d}, gen)), g = normal({B, H, N, d}, gen);
        AttentionOptions opts;
        opts.causal = causal;
        if (masked) opts.key_mask = mask;
        const Tensor out = attention(q, k, v, "axial", opts, args);
        backward(out, g);
        Tensor all = Tensor::zeros({B, N}, DType::Bool);
        for (int64_t j = 0; j < B * N; ++j) all.data<bool>()[j] = true;
        const Dense r = dense(values(q), values(k), values(v), values(g),
                              attention_pattern("axial", N, N, H, causal, args), masked ? mask : all, B, H, N, d);
        expect_near_all(values(out), r.out, 1e-5, "forward");
        expect_near_all(values(grad(q)), r.dq, 1e-4, "grad q");
        expect_near_all(values(grad(k)), r.dk, 1e-4, "grad k");
        expect_near_all(values(grad(v)), r.dv, 1e-4, "grad v");
      }
}

MechanismConfig image_config(int64_t h, int64_t w) {
  MechanismConfig c;
  c.d_model = 32, c.n_heads = 4, c.causal = true, c.max_len = h * w, c.positions = "rotary";
  c.options = {{"image_shape", {h, w}}};
  return c;
}

TEST(Axial, CausalImageLeaksNothingAndStopsAtItsLastPixel) {
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  const int64_t B = 2, N = 27, D = 32;  // a 6 x 5 image, the last row partly filled
  auto mech = make_mechanism("axial", image_config(6, 5));
  mech->eval();
  const Tensor x = normal({B, N, D}, gen);
  const std::vector<float> full = values(mech->forward(x));
  for (int64_t t : {int64_t(3), int64_t(12), int64_t(24)}) {  // inside rows: the pixels above-right are later
    Tensor changed = x.clone_data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = t + 1; i < N; ++i)
        for (int64_t c = 0; c < D; ++c) changed.data<float>()[(b * N + i) * D + c] += 5.0f;
    const std::vector<float> y = values(mech->forward(changed));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i <= t; ++i)
        for (int64_t c = 0; c < D; ++c)
          ASSERT_EQ(y[(b * N + i) * D + c], full[(b * N + i) * D + c]) << seed.str() << " t " << t << " row " << i;
  }
  // Streaming equals the parallel pass in the contract suites (and test_attention_axial.py, pixel by pixel
  // over a 7 x 7 image); here: a step past the image is an error that leaves the state as it was.
  auto state = mech->start(B);
  mech->step(x, *state);
  expect_error<ValueError>([&] { mech->step(Tensor::zeros({B, 4, D}), *state); }, {"image_shape"});
  EXPECT_EQ(state->length(), N);
  const std::vector<float> last = values(mech->step(Tensor::zeros({B, 3, D}), *state));
  EXPECT_EQ(state->length(), 30);
  EXPECT_EQ(last.size(), size_t(B * 3 * D));
}

TEST(Axial, BadLayoutsAreErrorsNamingTheOption) {
  MechanismConfig c = image_config(4, 4);
  for (const nlohmann::json& bad : {nlohmann::json({0, 4}), nlohmann::json({4}), nlohmann::json("4x4"),
                                    nlohmann::json({4, -1})}) {
    c.options = {{"image_shape", bad}};
    expect_error<ValueError>([&] { make_mechanism("axial", c); }, {"'axial'", "image_shape"});
  }
  c = image_config(4, 4);
  c.max_len = 17;  // more positions than pixels
  expect_error<ValueError>([&] { make_mechanism("axial", c); }, {"image_shape", "max_len = 17"});
  c = image_config(4, 4);
  c.n_heads = 1, c.d_model = 8;
  expect_error<ValueError>([&] { make_mechanism("axial", c); }, {"n_heads = 1", "rows and columns"});
  c = image_config(4, 4);
  c.options = nlohmann::json::object(), c.max_len = 0;
  expect_error<ValueError>([&] { make_mechanism("axial", c); }, {"causal", "image_shape"});
  c.causal = false;  // bidirectional standalone: the layout follows each call
  auto per_call = make_mechanism("axial", c);
  EXPECT_EQ(per_call->forward(Tensor::zeros({1, 10, 32})).shape(), (Shape{1, 10, 32}));
  auto fixed = make_mechanism("axial", image_config(4, 4));
  expect_error<ValueError>([&] { fixed->forward(Tensor::zeros({1, 17, 32})); }, {"17 positions", "image_shape"});
  MechanismArgs args;
  args.options = {{"image_shape", {2, 3}}};
  Tensor q = Tensor::zeros({1, 2, 7, 8}), k = Tensor::zeros({1, 2, 5, 8});
  expect_error<ValueError>([&] { attention(q, q, q, "axial", {}, args); }, {"7 positions", "image_shape"});
  AttentionOptions causal;
  causal.causal = true;
  expect_error<ShapeError>([&] { attention(q, k, k, "axial", causal); }, {"N == M"});
}

}  // namespace
}  // namespace eformer::attention
