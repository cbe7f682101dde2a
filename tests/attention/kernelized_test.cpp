// The kernelized family on the C++ side (feature_maps.h, kernelized.h, performer.h): error messages,
// properties that need no reference (no causal leak, recurrent == parallel, empty rows, huge
// log-scales), feature redraws (a pure function of seed and draw index, replayed under
// autograd::checkpoint) and the checkpoint round trip of a Performer language model. The parity
// with a float64 PyTorch reference lives in tests/python.
//
// Inputs are drawn from a fresh seed each run, printed as "[ seed ]"; EFORMER_TEST_SEED=<n>
// replays one.
#include "eformer/attention/kernels/kernelized.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/kernels/feature_maps.h"
#include "eformer/attention/functional.h"
#include "eformer/attention/mechanisms/performer.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::normal;
using testing::leaf;
using testing::error_of;
using testing::Seed;
using testing::expect_error;
using testing::TempDir;

// ---- helpers ----

// Non-negative features, as positive / relu / elu + 1 maps give: exp(N(0, 1) / 2).
Tensor positive(const Shape& shape, rng::Generator& gen) {
  Tensor t = normal(shape, gen, 0.5f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::exp(p[i]);
  return t;
}

MechanismArgs json_args(nlohmann::json options) {
  MechanismArgs a;
  a.options = std::move(options);
  return a;
}

Tensor bool_mask(int64_t B, int64_t M, const std::function<bool(int64_t, int64_t)>& real) {
  Tensor m = Tensor::zeros({B, M}, DType::Bool);
  bool* p = m.data<bool>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < M; ++j) p[b * M + j] = real(b, j);
  return m;
}

// Index of flat element i (of a contiguous tensor of `shape`) along `dim`.
int64_t index_along(const Shape& shape, int64_t dim, int64_t i) {
  int64_t inner = 1;
  for (size_t k = size_t(dim) + 1; k < shape.size(); ++k) inner *= shape[k];
  return (i / inner) % shape[size_t(dim)];
}

// a where the index along `dim` is <= t, b after it.
Tensor splice_after(const Tensor& a, const Tensor& b, int64_t dim, int64_t t) {
  EXPECT_EQ(a.shape(), b.shape());
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i)
    if (index_along(a.shape(), dim, int64_t(i)) > t) x[i] = y[i];
  return Tensor::from_vector(x, a.shape());
}

// max |a - b| over the elements whose index along `dim` is <= t (all of them for t = -1 + size).
float max_diff_upto(const Tensor& a, const Tensor& b, int64_t dim, int64_t t) {
  EXPECT_EQ(a.shape(), b.shape());
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (index_along(a.shape(), dim, int64_t(i)) > t) continue;
    const float d = std::abs(x[i] - y[i]);
    if (!(d <= m)) m = d;  // NaN propagates as NaN
  }
  return m;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  return max_diff_upto(a, b, 0, a.dim() > 0 ? a.size(0) : 0);
}

bool all_finite(const Tensor& t) {
  for (float x : t.to_vector())
    if (!std::isfinite(x)) return false;
  return true;
}

// out_i = sum_j w_ij v_j / sum_j w_ij, w_ij = (phi_q_i . phi_k_j) exp(l_j), in double (0 for a
// query with no allowed key). [B, H, N, F], [B, H, M, F], [B, H, M, dv], [B, H, M].
std::vector<double> direct_kernelized(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                                      const Tensor& l, bool causal, const Tensor& key_mask) {
  const int64_t B = phi_q.size(0), H = phi_q.size(1), N = phi_q.size(2), F = phi_q.size(3), M = phi_k.size(2),
                dv = v.size(3);
  auto q = phi_q.to_vector(), k = phi_k.to_vector(), vv = v.to_vector();
  std::vector<float> ls = l.defined() ? l.to_vector() : std::vector<float>(size_t(B * H * M), 0.0f);
  std::vector<double> out(size_t(B * H * N * dv), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      for (int64_t i = 0; i < N; ++i) {
        auto allowed = [&](int64_t j) {
          if (causal && j > i) return false;
          return !key_mask.defined() || key_mask.data<bool>()[b * M + j];
        };
        double mx = -1e300;
        for (int64_t j = 0; j < M; ++j)
          if (allowed(j)) mx = std::max(mx, double(ls[size_t(bh * M + j)]));
        double den = 0;
        std::vector<double> num(size_t(dv), 0.0);
        for (int64_t j = 0; j < M; ++j) {
          if (!allowed(j)) continue;
          double dot = 0;
          for (int64_t f = 0; f < F; ++f)
            dot += double(q[size_t((bh * N + i) * F + f)]) * k[size_t((bh * M + j) * F + f)];
          const double w = dot * std::exp(double(ls[size_t(bh * M + j)]) - mx);
          den += w;
          for (int64_t c = 0; c < dv; ++c) num[size_t(c)] += w * vv[size_t((bh * M + j) * dv + c)];
        }
        if (den != 0)
          for (int64_t c = 0; c < dv; ++c) out[size_t((bh * N + i) * dv + c)] = num[size_t(c)] / den;
      }
    }
  return out;
}

std::shared_ptr<PerformerAttention> make_performer(const std::string& name, int64_t d_model, int64_t n_heads,
                                                   bool causal,
                                                   nlohmann::json options = nlohmann::json::object()) {
  MechanismConfig c;
  c.d_model = d_model;
  c.n_heads = n_heads;
  c.causal = causal;
  c.options = std::move(options);
  auto m = std::dynamic_pointer_cast<PerformerAttention>(make_mechanism(name, c));
  EXPECT_NE(m, nullptr) << name << " is not a PerformerAttention";
  return m;
}

// ---- 1. errors ----

TEST(KernelizedErrors, CoreNamesTheArgumentAndTheExpectation) {
  rng::Generator g(1);
  Tensor pq = positive({2, 3, 5, 8}, g), pk = positive({2, 3, 7, 8}, g), v = normal({2, 3, 7, 4}, g),
         l = normal({2, 3, 7}, g);
  ASSERT_NO_THROW(kernelized_attention(pq, pk, v, l, false));
  // phi_q and phi_k of different feature widths.
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, positive({2, 3, 7, 6}, g), v, l, false);
      },
      {"phi_k", "[2, 3, 7, 6]"});
  // v not as long as phi_k.
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, normal({2, 3, 6, 4}, g), l, false);
      },
      {"v", "[2, 3, 6, 4]"});
  // batch / heads disagree.
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, positive({2, 2, 7, 8}, g), v, l, false);
      },
      {"phi_k", "[2, 2, 7, 8]"});
  // wrong rank.
  expect_error<ShapeError>([&] { kernelized_attention(positive({3, 5, 8}, g), pk, v, l, false); }, {"phi_q"});
  // log_scale_k not [B, H, M].
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, v, normal({2, 3, 6}, g), false);
      },
      {"log_scale_k", "[2, 3, 6]"});
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, v, normal({2, 3, 7, 1}, g), false);
      },
      {"log_scale_k"});
  // key_mask of the wrong shape or dtype.
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, v, l, false, Tensor::zeros({2, 5}, DType::Bool));
      },
      {"key_mask", "[2, 5]"});
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, v, l, false, Tensor::zeros({2, 7}));
      },
      {"key_mask", "float32"});
  // causal with N != M.
  const std::string causal = error_of<Error>([&] { kernelized_attention(pq, pk, v, l, true); });
  EXPECT_NE(causal.find("causal"), std::string::npos) << causal;
  EXPECT_NE(causal.find('5'), std::string::npos) << causal;
  EXPECT_NE(causal.find('7'), std::string::npos) << causal;
  // non-float dtypes.
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(Tensor::zeros({2, 3, 5, 8}, DType::Int64), pk, v, l, false);
      },
      {"phi_q", "int64"});
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, Tensor::zeros({2, 3, 7, 8}, DType::Bool), v, l, false);
      },
      {"phi_k", "bool"});
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, Tensor::zeros({2, 3, 7, 4}, DType::Int64), l, false);
      },
      {"v", "int64"});
  expect_error<ShapeError>(
      [&] {
        kernelized_attention(pq, pk, v, Tensor::zeros({2, 3, 7}, DType::Int64), false);
      },
      {"log_scale_k", "int64"});
}

TEST(KernelizedErrors, StepChecksShapes) {
  rng::Generator g(2);
  KernelizedState st;
  Tensor pq = positive({1, 2, 3, 8}, g), pk = positive({1, 2, 3, 8}, g), v = normal({1, 2, 3, 4}, g);
  ASSERT_NO_THROW(kernelized_attention_step(pq, pk, v, Tensor(), st));
  EXPECT_EQ(st.length, 3);
  // A step whose feature width or value width differs from the state's.
  EXPECT_THROW(kernelized_attention_step(positive({1, 2, 1, 6}, g), positive({1, 2, 1, 6}, g),
                                         normal({1, 2, 1, 4}, g), Tensor(), st),
               ShapeError);
  EXPECT_THROW(kernelized_attention_step(positive({1, 2, 1, 8}, g), positive({1, 2, 1, 8}, g),
                                         normal({1, 2, 1, 5}, g), Tensor(), st),
               ShapeError);
  // phi_q and phi_k of different lengths (a step is causal over its own tokens).
  KernelizedState fresh;
  EXPECT_THROW(kernelized_attention_step(positive({1, 2, 2, 8}, g), pk, v, Tensor(), fresh), ShapeError);
}

TEST(PerformerOptions, ParseErrorsNameTheOption) {
  auto parse = [](const nlohmann::json& j) { return parse_performer_options("performer", j); };
  ASSERT_NO_THROW(parse({{"kernel", "gaussian"}, {"features", "trig"}, {"m", 12}, {"redraw", 0}}));
  const std::string unknown = error_of<ValueError>([&] { parse({{"windw", 4}}); });
  for (const char* part :
       {"'windw'", "kernel", "features", "projection", "ortho", "norms", "redraw", "rotary"})
    EXPECT_NE(unknown.find(part), std::string::npos) << part << " in: " << unknown;
  expect_error<ValueError>([&] { parse({{"kernel", "foo"}}); }, {"kernel", "foo", "softmax", "relu"});
  expect_error<ValueError>([&] { parse({{"kernel", "relu"}, {"features", "trig"}}); }, {"trig", "relu"});
  expect_error<ValueError>([&] { parse({{"projection", false}}); }, {"projection", "softmax"});
  expect_error<ValueError>(
      [&] {
        parse({{"kernel", "gaussian"}, {"projection", false}});
      },
      {"projection", "gaussian"});
  expect_error<ValueError>([&] { parse({{"m", 0}}); }, {"m = 0", "[1, 1048576]"});
  expect_error<ValueError>([&] { parse({{"m", -3}}); }, {"m = -3", "[1, 1048576]"});
  expect_error<ValueError>([&] { parse({{"m", int64_t(1) << 62}}); }, {"m = 4611686018427387904", "[1, 1048576]"});
  expect_error<ValueError>([&] { parse({{"m", 2.5}}); }, {"m = 2.5"});
  expect_error<ValueError>([&] { parse({{"norms", "bar"}}); }, {"norms", "bar", "chi", "fixed"});
  expect_error<ValueError>([&] { parse({{"redraw", -1}}); }, {"redraw", "-1"});
  expect_error<ValueError>([&] { parse({{"ortho", "yes"}}); }, {"ortho", "yes"});
  expect_error<ValueError>(
      [&] {
        parse_performer_options("linear", {{"features", "trig"}});
      },
      {"trig", "elu"});
  // The linear defaults: elu, no projection.
  const PerformerOptions lin = parse_performer_options("linear", nlohmann::json::object());
  EXPECT_EQ(lin.features.kernel, Kernel::Elu);
  EXPECT_FALSE(lin.features.projection);
  const PerformerOptions perf = parse_performer_options("performer", nlohmann::json::object());
  EXPECT_EQ(perf.features.kernel, Kernel::Softmax);
  EXPECT_TRUE(perf.features.projection);
  EXPECT_EQ(perf.redraw, 1000);
}

TEST(PerformerErrors, FunctionalAndMechanism) {
  rng::Generator g(3);
  Tensor q = normal({2, 2, 5, 8}, g), k = normal({2, 2, 5, 8}, g), v = normal({2, 2, 5, 8}, g);
  // Exact kinds reject the kernelized options (each mechanism parses its own).
  const AttentionOptions none;
  const MechanismArgs with_features = json_args({{"m", 4}});
  expect_error<ValueError>([&] { attention(q, k, v, "flash", none, with_features); },
                           {"'flash'", "unknown option 'm'"});
  expect_error<ValueError>([&] { attention(q, k, v, "full", none, with_features); }, {"'full'", "'m'"});
  MechanismArgs with_omega;
  with_omega.tensors["omega"] = normal({6, 8}, g);
  expect_error<ValueError>([&] { attention(q, k, v, "flash", none, with_omega); }, {"omega"});
  // The kernelized kinds accept them; omega must be [m, d].
  ASSERT_NO_THROW(attention(q, k, v, "performer", none, with_omega));
  MechanismArgs wide;
  wide.tensors["omega"] = normal({6, 9}, g);
  expect_error<ShapeError>([&] { performer_attention(q, k, v, none, wide); }, {"omega", "[6, 9]"});
  MechanismArgs other_tensor;
  other_tensor.tensors["bias"] = normal({6, 9}, g);
  expect_error<ValueError>([&] { performer_attention(q, k, v, none, other_tensor); }, {"bias", "omega"});
  expect_error<ValueError>([&] { performer_attention(q, k, v, none, json_args({{"kernel", "foo"}})); },
                           {"kernel", "foo"});
  // a mechanism option, not a feature-map one
  expect_error<ValueError>([&] { performer_attention(q, k, v, none, json_args({{"redraw", 3}})); }, {"redraw"});
  AttentionOptions scaled;
  scaled.scale = 0.5f;
  expect_error<ValueError>([&] { performer_attention(q, k, v, scaled, json_args({{"kernel", "relu"}})); },
                           {"scale"});
  AttentionOptions dropped;
  dropped.dropout = 0.1f;
  expect_error<ValueError>([&] { performer_attention(q, k, v, dropped); }, {"dropout", "no probabilities"});
  AttentionOptions causal;
  causal.causal = true;
  expect_error<Error>(
      [&] {
        performer_attention(q, normal({2, 2, 7, 8}, g), normal({2, 2, 7, 8}, g), causal);
      },
      {"causal"});
  // Mechanisms: d_model must split into heads.
  MechanismConfig c{.d_model = 10, .n_heads = 3};
  expect_error<ValueError>([&] { make_mechanism("performer", c); }, {"d_model = 10", "n_heads = 3"});
  expect_error<ValueError>([&] { make_mechanism("linear", c); }, {"d_model = 10", "n_heads = 3"});
  MechanismConfig bad_opt{.d_model = 16, .n_heads = 2, .options = {{"kernel", "foo"}}};
  expect_error<ValueError>([&] { make_mechanism("performer", bad_opt); }, {"kernel", "foo"});
  auto names = mechanism_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "performer"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "linear"), names.end());
  // x of the wrong width.
  auto m = make_performer("performer", 16, 2, true);
  expect_error<ShapeError>([&] { m->forward(normal({2, 5, 12}, g)); }, {"[2, 5, 12]"});
}

TEST(PerformerErrors, DrawOmegaRejectsEmptySizes) {
  rng::Generator g(4);
  expect_error<ValueError>([&] { draw_omega(0, 8, true, false, g); }, {"m = 0"});
  expect_error<ValueError>([&] { draw_omega(4, -1, false, false, g); }, {"d = -1"});
}

// ---- 2. properties ----

TEST(KernelizedCore, MatchesTheDirectSum) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  const int64_t B = 2, H = 2, N = 70, F = 9, dv = 5;
  Tensor pq = positive({B, H, N, F}, g), pk = positive({B, H, N, F}, g), v = normal({B, H, N, dv}, g),
         l = normal({B, H, N}, g, 3.0f);
  Tensor mask = bool_mask(B, N, [](int64_t b, int64_t j) { return b == 0 || j % 3 != 1; });
  for (bool causal : {false, true})
    for (bool masked : {false, true})
      for (bool with_l : {false, true}) {
        Tensor km = masked ? mask : Tensor(), ls = with_l ? l : Tensor();
        std::vector<float> got = kernelized_attention(pq, pk, v, ls, causal, km).to_vector();
        std::vector<double> want = direct_kernelized(pq, pk, v, ls, causal, km);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], want[i], 2e-5 * (1 + std::abs(want[i])))
              << "causal " << causal << " masked " << masked << " log-scale " << with_l << " at " << i;
      }
}

TEST(KernelizedCore, NoCausalLeak) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  const int64_t B = 2, H = 2, N = 150, F = 12, dv = 5;  // spans three chunks of kKernelizedChunk
  Tensor pq = positive({B, H, N, F}, g), pk = positive({B, H, N, F}, g), v = normal({B, H, N, dv}, g),
         l = normal({B, H, N}, g, 2.0f);
  // The replacements: other features, other values, and much larger log-scales (so the running
  // maximum would move if the future leaked into it).
  Tensor pk2 = positive({B, H, N, F}, g), v2 = normal({B, H, N, dv}, g, 10.0f),
         l2 = normal({B, H, N}, g, 2.0f, 40.0f);
  const Tensor base = kernelized_attention(pq, pk, v, l, true);
  for (int64_t t : {0, 1, 62, 63, 64, 100, 127, 128, 148}) {
    Tensor out = kernelized_attention(pq, splice_after(pk, pk2, 2, t), splice_after(v, v2, 2, t),
                                      splice_after(l, l2, 2, t), true);
    EXPECT_LE(max_diff_upto(out, base, 2, t), 1e-7f) << "future keys after " << t << " changed the past";
    EXPECT_GT(max_diff_upto(out, base, 2, N), 0.0f) << "the perturbation changed nothing (t " << t << ")";
  }
  // Backward: a loss on the outputs at positions <= t gives no gradient to keys after t.
  for (int64_t t : {5, 63, 64, 120}) {
    Tensor a = leaf(pq.clone_data()), b = leaf(pk.clone_data()), c = leaf(v.clone_data()),
           d = leaf(l.clone_data());
    Tensor out = kernelized_attention(a, b, c, d, true);
    Tensor up = splice_after(normal(out.shape(), g), Tensor::zeros(out.shape()), 2, t);
    backward(out, up);
    for (const auto& [name, x] : std::vector<std::pair<const char*, Tensor>>{
             {"phi_q", a}, {"phi_k", b}, {"v", c}, {"log_scale_k", d}}) {
      ASSERT_TRUE(grad(x).defined()) << name;
      EXPECT_TRUE(all_finite(grad(x))) << name;
      EXPECT_EQ(max_diff_upto(splice_after(Tensor::zeros(x.shape()), grad(x), 2, t), Tensor::zeros(x.shape()),
                              2, N),
                0.0f)
          << "d out[<= " << t << "] / d " << name << "[> " << t << "] is not 0";
      EXPECT_GT(max_diff_upto(grad(x), Tensor::zeros(x.shape()), 2, t), 0.0f) << name << " got no gradient";
    }
  }
}

TEST(KernelizedCore, RecurrentStepEqualsParallelCausal) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  const int64_t B = 2, H = 2, N = 170, F = 10, dv = 6;
  Tensor pq = positive({B, H, N, F}, g), pk = positive({B, H, N, F}, g), v = normal({B, H, N, dv}, g);
  // Log-scales that grow along the sequence, so the running maximum moves often mid-stream.
  Tensor l = normal({B, H, N}, g, 3.0f);
  {
    float* p = l.data<float>();
    for (int64_t i = 0; i < l.numel(); ++i) p[i] += 0.05f * float(i % N);
  }
  for (bool with_l : {true, false}) {
    Tensor ls = with_l ? l : Tensor();
    const Tensor parallel = kernelized_attention(pq, pk, v, ls, true);
    const std::vector<std::vector<int64_t>> schedules = {{1}, {3}, {64}, {100}, {1, 3, 64, 100}};
    for (const auto& sizes : schedules) {
      KernelizedState st;
      std::vector<Tensor> outs;
      int64_t pos = 0;
      for (size_t s = 0; pos < N; ++s) {
        const int64_t T = std::min(sizes[s % sizes.size()], N - pos);
        auto part = [&](const Tensor& x) { return contiguous(narrow(x, 2, pos, T)); };
        outs.push_back(
            kernelized_attention_step(part(pq), part(pk), part(v), ls.defined() ? part(ls) : Tensor(), st));
        pos += T;
        ASSERT_EQ(st.length, pos);
      }
      const Tensor recurrent = cat(outs, 2);
      ASSERT_EQ(recurrent.shape(), parallel.shape());
      EXPECT_LT(max_abs_diff(recurrent, parallel), 1e-5f)
          << "chunks of " << sizes[0] << (sizes.size() > 1 ? " (mixed)" : "") << ", log-scale " << with_l;
    }
  }
}

TEST(KernelizedCore, QueryWithNoAllowedKeyOutputsZeroWithZeroGradients) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  const int64_t B = 2, H = 2, N = 80, M = 80, F = 7, dv = 4;
  for (bool causal : {false, true}) {
    Tensor pq = leaf(positive({B, H, N, F}, g)), pk = leaf(positive({B, H, M, F}, g)),
           v = leaf(normal({B, H, M, dv}, g)), l = leaf(normal({B, H, M}, g, 3.0f));
    // Batch row 1: no key at all. Batch row 0: the first 5 keys are padding, so causally the
    // first 5 queries have nothing to attend.
    Tensor mask = bool_mask(B, M, [](int64_t b, int64_t j) { return b == 0 && j >= 5; });
    Tensor out = kernelized_attention(pq, pk, v, l, causal, mask);
    ASSERT_TRUE(all_finite(out));
    const std::vector<float> o = out.to_vector();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t c = 0; c < dv; ++c) {
          EXPECT_EQ(o[size_t(((1 * H + h) * N + i) * dv + c)], 0.0f) << "batch row 1 has no key";
          if (causal && i < 5) {
            EXPECT_EQ(o[size_t(((0 * H + h) * N + i) * dv + c)], 0.0f) << "row " << i;
          }
        }
    backward(out, normal(out.shape(), g));
    for (const auto& [name, x] : std::vector<std::pair<const char*, Tensor>>{
             {"phi_q", pq}, {"phi_k", pk}, {"v", v}, {"log_scale_k", l}}) {
      ASSERT_TRUE(grad(x).defined()) << name;
      EXPECT_TRUE(all_finite(grad(x))) << name << " causal " << causal;
      // batch row 1 (index >= 1 along dim 0) receives exactly 0.
      const std::vector<float> gx = grad(x).to_vector();
      for (size_t i = size_t(x.numel() / B); i < gx.size(); ++i)
        ASSERT_EQ(gx[i], 0.0f) << name << " causal " << causal << " at " << i;
      // Masked keys of batch row 0 receive 0 too.
      if (x.is_same(pq)) {
        if (causal) {
          EXPECT_EQ(
              max_diff_upto(narrow(grad(x), 0, 0, 1).contiguous_data(), Tensor::zeros({1, H, N, F}), 2, 4),
              0.0f)
              << "queries with no key got a gradient";
        }
      } else {
        EXPECT_EQ(max_diff_upto(narrow(grad(x), 0, 0, 1).contiguous_data(),
                                Tensor::zeros(narrow(grad(x), 0, 0, 1).shape()), 2, 4),
                  0.0f)
            << name << ": padding keys got a gradient";
      }
    }
  }
}

TEST(KernelizedCore, HugeLogScalesAreFiniteAndShiftInvariant) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  const int64_t B = 1, H = 2, N = 130, F = 8, dv = 3;
  Tensor pq = positive({B, H, N, F}, g), pk = positive({B, H, N, F}, g), v = normal({B, H, N, dv}, g);
  // Spread +-1e4, on a grid of 1/64 so that adding +-1e4 or 2^13 is exact in float32 and every
  // difference l_j - l_k is unchanged by the shift.
  Tensor l = normal({B, H, N}, g, 1e4f);
  Tensor small = normal({B, H, N}, g, 2.0f);
  for (Tensor* t : {&l, &small}) {
    float* p = t->data<float>();
    for (int64_t i = 0; i < t->numel(); ++i) p[i] = std::round(p[i] * 64.0f) / 64.0f;
  }
  auto shifted = [](const Tensor& t, float c) {
    std::vector<float> x = t.to_vector();
    for (float& e : x) e += c;
    return Tensor::from_vector(x, t.shape());
  };
  for (bool causal : {false, true}) {
    for (const Tensor& ls : {l, small}) {
      const Tensor base = kernelized_attention(pq, pk, v, ls, causal);
      ASSERT_TRUE(all_finite(base)) << "causal " << causal;
      for (float c : {1e4f, -1e4f, 8192.0f}) {
        const Tensor out = kernelized_attention(pq, pk, v, shifted(ls, c), causal);
        ASSERT_TRUE(all_finite(out)) << "shift " << c << " causal " << causal;
        EXPECT_LE(max_abs_diff(out, base), 1e-6f) << "shift " << c << " causal " << causal;
      }
    }
    // The large spread is still right: the direct sum in double (shifted by the maximum).
    const std::vector<float> got = kernelized_attention(pq, pk, v, l, causal).to_vector();
    const std::vector<double> want = direct_kernelized(pq, pk, v, l, causal, Tensor());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << i;
  }
  // Gradients with huge log-scales are finite.
  Tensor a = leaf(pq.clone_data()), b = leaf(pk.clone_data()), c = leaf(v.clone_data()),
         d = leaf(l.clone_data());
  backward(kernelized_attention(a, b, c, d, true), normal({B, H, N, dv}, g));
  for (const Tensor& x : {a, b, c, d}) EXPECT_TRUE(all_finite(grad(x)));
}

struct MechanismCase {
  const char* name;
  bool rotary;
};
const MechanismCase kMechanismCases[] = {
    {"performer", false}, {"performer", true}, {"linear", false}, {"linear", true}};

TEST(PerformerMechanism, NoCausalLeak) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  rng::manual_seed(seed.value);
  const int64_t B = 2, N = 75, D = 16;
  for (const auto& mc : kMechanismCases) {
    auto m = make_performer(mc.name, D, 2, true, {{"rotary", mc.rotary}});
    m->eval();
    autograd::NoGradGuard no_grad;
    Tensor x = normal({B, N, D}, g), other = normal({B, N, D}, g, 5.0f);
    const Tensor base = m->forward(x);
    ASSERT_EQ(base.shape(), (Shape{B, N, D}));
    for (int64_t t : {0, 10, 63, 64, 73}) {
      const Tensor out = m->forward(splice_after(x, other, 1, t));
      EXPECT_LE(max_diff_upto(out, base, 1, t), 1e-6f) << mc.name << " rotary " << mc.rotary << " t " << t;
      EXPECT_GT(max_diff_upto(out, base, 1, N), 0.0f) << mc.name;
    }
  }
}

TEST(PerformerMechanism, StepEqualsCausalForward) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::Generator g(seed.value);
  rng::manual_seed(seed.value);
  const int64_t B = 2, N = 110, D = 16;
  for (const auto& mc : kMechanismCases) {
    auto m = make_performer(mc.name, D, 2, true, {{"rotary", mc.rotary}});
    m->eval();
    autograd::NoGradGuard no_grad;
    Tensor x = normal({B, N, D}, g);
    const Tensor parallel = m->forward(x);
    for (const std::vector<int64_t>& sizes :
         std::vector<std::vector<int64_t>>{{1}, {3}, {64}, {100}, {1, 3, 64, 100}}) {
      auto st = m->start(B);
      std::vector<Tensor> outs;
      int64_t pos = 0;
      for (size_t s = 0; pos < N; ++s) {
        const int64_t T = std::min(sizes[s % sizes.size()], N - pos);
        outs.push_back(m->step(contiguous(narrow(x, 1, pos, T)), *st));
        pos += T;
        ASSERT_EQ(st->length(), pos);
      }
      EXPECT_LT(max_abs_diff(cat(outs, 1), parallel), 1e-5f)
          << mc.name << " rotary " << mc.rotary << " chunks of " << sizes[0]
          << (sizes.size() > 1 ? " (mixed)" : "");
    }
  }
}

TEST(PerformerMechanism, CapabilitiesAndNames) {
  auto m = make_performer("performer", 16, 2, true);
  const Capabilities c = m->capabilities();
  EXPECT_TRUE(c.causal);
  EXPECT_TRUE(c.bidirectional);
  EXPECT_TRUE(c.recurrent);
  EXPECT_TRUE(c.padding_mask);
  std::vector<std::string> params;
  for (const auto& [name, p] : m->named_parameters()) params.push_back(name);
  for (const char* n : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"})
    EXPECT_NE(std::find(params.begin(), params.end(), n), params.end()) << n;
  ASSERT_NE(m->find_buffer("omega"), nullptr);
  ASSERT_NE(m->find_buffer("omega_draw"), nullptr);
  EXPECT_EQ(m->find_buffer("omega")->shape(), (Shape{int64_t(std::llround(8 * std::log(8.0))), 8}));
  EXPECT_EQ(m->find_buffer("omega_draw")->dtype(), DType::Int64);
  EXPECT_EQ(m->find_buffer("omega_draw")->shape(), (Shape{2}));
}

// ---- 3. redraws ----

TEST(PerformerRedraw, EveryKTrainingStepsAndAPureFunctionOfTheDrawIndex) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::manual_seed(seed.value);
  const int64_t K = 3;
  auto m = make_performer("performer", 16, 2, true, {{"redraw", K}, {"m", 12}});
  m->train();
  const std::vector<float> first = m->omega().to_vector();
  const int64_t first_index = m->draw_index();
  EXPECT_EQ(m->find_buffer("omega_draw")->to_int_vector()[1], first_index);
  for (int64_t s = 0; s < K; ++s) {
    m->set_step(s);
    EXPECT_EQ(m->omega().to_vector(), first) << "redrawn at step " << s << " < K = " << K;
    EXPECT_EQ(m->draw_index(), first_index);
  }
  m->set_step(K);
  const std::vector<float> second = m->omega().to_vector();
  EXPECT_NE(second, first) << "no redraw at step K";
  EXPECT_NE(m->draw_index(), first_index);
  EXPECT_EQ(m->find_buffer("omega_draw")->to_int_vector()[1], m->draw_index());
  EXPECT_EQ(m->find_buffer("omega")->to_vector(), second) << "the buffer and omega() disagree";
  m->set_step(K + 1);
  EXPECT_EQ(m->omega().to_vector(), second);
  m->set_step(2 * K);
  const std::vector<float> third = m->omega().to_vector();
  EXPECT_NE(third, second);
  EXPECT_NE(third, first);
  // Back to step 0 (a resumed or replayed run): the first omega, exactly.
  m->set_step(0);
  EXPECT_EQ(m->omega().to_vector(), first);
  EXPECT_EQ(m->draw_index(), first_index);
  m->set_step(K);
  EXPECT_EQ(m->omega().to_vector(), second);

  // A second mechanism from the same seed: the same draws at the same indices.
  rng::manual_seed(seed.value);
  auto twin = make_performer("performer", 16, 2, true, {{"redraw", K}, {"m", 12}});
  EXPECT_EQ(twin->omega().to_vector(), first);
  EXPECT_EQ(twin->find_buffer("omega_draw")->to_int_vector(),
            (std::vector<int64_t>{m->find_buffer("omega_draw")->to_int_vector()[0], first_index}));
  twin->set_step(2 * K);
  EXPECT_EQ(twin->omega().to_vector(), third);
  const nn::NamedTensors mine = m->named_parameters(), twins = twin->named_parameters();
  ASSERT_EQ(mine.size(), twins.size());
  for (size_t i = 0; i < mine.size(); ++i)
    EXPECT_EQ(mine[i].second.to_vector(), twins[i].second.to_vector()) << mine[i].first;

  // Another seed: another omega.
  rng::manual_seed(seed.value + 1);
  auto other = make_performer("performer", 16, 2, true, {{"redraw", K}, {"m", 12}});
  EXPECT_NE(other->omega().to_vector(), first);
}

TEST(PerformerRedraw, EvalModeAndRedrawZeroNeverRedraw) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::manual_seed(seed.value);
  auto m = make_performer("performer", 16, 2, false, {{"redraw", 2}});
  m->eval();
  const std::vector<float> first = m->omega().to_vector();
  for (int64_t s : {0, 1, 2, 3, 4, 10, 1001}) {
    m->set_step(s);
    EXPECT_EQ(m->omega().to_vector(), first) << "eval mode redrew at step " << s;
  }
  auto never = make_performer("performer", 16, 2, false, {{"redraw", 0}});
  never->train();
  const std::vector<float> fixed = never->omega().to_vector();
  for (int64_t s : {0, 1, 999, 1000, 5000}) {
    never->set_step(s);
    EXPECT_EQ(never->omega().to_vector(), fixed) << "redraw = 0 redrew at step " << s;
  }
  // Default redraw = 1000.
  auto dflt = make_performer("performer", 16, 2, false);
  dflt->train();
  const std::vector<float> d0 = dflt->omega().to_vector();
  dflt->set_step(999);
  EXPECT_EQ(dflt->omega().to_vector(), d0);
  dflt->set_step(1000);
  EXPECT_NE(dflt->omega().to_vector(), d0);
  // "linear" has no omega to redraw and must accept set_step all the same.
  auto lin = make_performer("linear", 16, 2, false, {{"redraw", 1}});
  lin->train();
  EXPECT_NO_THROW(lin->set_step(5));
}

TEST(PerformerRedraw, DrawOmegaBlocksAreOrthogonal) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  const int64_t d = 8, m = 2 * d + 3;  // two full blocks and a partial one
  auto rows = [&](const Tensor& w) {
    EXPECT_EQ(w.shape(), (Shape{m, d}));
    std::vector<float> x = w.to_vector();
    return x;
  };
  auto dot = [&](const std::vector<float>& x, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += double(x[size_t(i * d + c)]) * x[size_t(j * d + c)];
    return s;
  };
  for (bool fixed : {false, true}) {
    rng::Generator g(seed.value, 7);
    const std::vector<float> w = rows(draw_omega(m, d, true, fixed, g));
    std::vector<double> norms;
    for (int64_t i = 0; i < m; ++i) norms.push_back(std::sqrt(dot(w, i, i)));
    for (int64_t i = 0; i < m; ++i) {
      if (fixed) {
        EXPECT_NEAR(norms[size_t(i)], std::sqrt(double(d)), 1e-5) << "row " << i;
      }
      for (int64_t j = i + 1; j < m && j / d == i / d; ++j)
        EXPECT_NEAR(dot(w, i, j) / (norms[size_t(i)] * norms[size_t(j)]), 0.0, 1e-5)
            << "rows " << i << ", " << j;
    }
    if (!fixed) {
      double lo = 1e30, hi = 0;
      for (double n : norms) lo = std::min(lo, n), hi = std::max(hi, n);
      EXPECT_GT(hi - lo, 1e-3) << "chi norms should differ between rows";
    }
    // A pure function of the generator state, and the generator moves on.
    rng::Generator g2(seed.value, 7);
    EXPECT_EQ(rows(draw_omega(m, d, true, fixed, g2)), w);
    EXPECT_EQ(g2.state(), g.state());
    EXPECT_NE(rows(draw_omega(m, d, true, fixed, g2)), w);
  }
  // Independent rows are not orthogonal.
  rng::Generator g(seed.value, 8);
  const std::vector<float> iid = rows(draw_omega(m, d, false, false, g));
  double worst = 0;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = i + 1; j < d; ++j)
      worst = std::max(worst, std::abs(dot(iid, i, j)) / std::sqrt(dot(iid, i, i) * dot(iid, j, j)));
  EXPECT_GT(worst, 1e-3);
}

// ---- 4. redraws replay under recomputation ----

TEST(PerformerRedraw, CheckpointedForwardGivesThePlainGradients) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  rng::manual_seed(seed.value);
  rng::Generator g(seed.value, 3);
  for (bool causal : {true, false}) {
    auto m = make_performer("performer", 16, 2, causal, {{"redraw", 2}, {"rotary", causal}});
    m->train();
    const std::vector<float> before = m->omega().to_vector();
    m->set_step(2);  // a redraw
    ASSERT_NE(m->omega().to_vector(), before);
    Tensor x = leaf(normal({2, 20, 16}, g));
    Tensor up = normal({2, 20, 16}, g);

    const Tensor plain = m->forward(x);
    backward(plain, up);
    std::vector<std::pair<std::string, std::vector<float>>> plain_grads;
    for (const auto& [name, p] : m->named_parameters()) {
      ASSERT_TRUE(grad(p).defined()) << name;
      plain_grads.emplace_back(name, grad(p).to_vector());
    }
    const std::vector<float> plain_gx = grad(x).to_vector();
    m->zero_grad();
    zero_grad(x);

    const Tensor ckpt =
        autograd::checkpoint([&](const std::vector<Tensor>& in) { return m->forward(in[0]); }, {x});
    EXPECT_LE(max_abs_diff(ckpt, plain), 1e-6f);
    backward(ckpt, up);
    size_t i = 0;
    for (const auto& [name, p] : m->named_parameters()) {
      ASSERT_TRUE(grad(p).defined()) << name;
      const std::vector<float> gp = grad(p).to_vector();
      ASSERT_EQ(gp.size(), plain_grads[i].second.size());
      for (size_t e = 0; e < gp.size(); ++e)
        ASSERT_NEAR(gp[e], plain_grads[i].second[e], 1e-6 * (1 + std::abs(plain_grads[i].second[e])))
            << name << " causal " << causal;
      ++i;
    }
    EXPECT_LE(max_abs_diff(grad(x), Tensor::from_vector(plain_gx, x.shape())), 1e-6f);
    EXPECT_EQ(m->omega().to_vector().size(), before.size());
  }
}

// ---- 5. checkpoint round trip ----

TEST(PerformerCheckpoint, SavedModelLoadsWithItsOmegaAndGivesTheSameLogits) {
  Seed seed;
  SCOPED_TRACE(seed.str());
  for (const char* positions : {"learned", "rotary"}) {
    SCOPED_TRACE(positions);
    rng::manual_seed(seed.value);
    models::ModelConfig c =
        models::parse_model_config({{"vocab_size", 64},
                                    {"d_model", 16},
                                    {"n_heads", 2},
                                    {"n_layers", 2},
                                    {"d_ff", 32},
                                    {"max_len", 16},
                                    {"dropout", 0.0},
                                    {"positions", positions},
                                    {"attention", {{"kind", "performer"}, {"options", {{"redraw", 2}}}}}});
    auto model = std::make_shared<models::LanguageModel>(c);
    model->train();
    model->set_step(3);  // draw index 1: not what a fresh model of this config holds
    model->eval();
    std::vector<int64_t> id_values(2 * 16);
    for (size_t i = 0; i < id_values.size(); ++i)
      id_values[i] = int64_t(rng::philox(seed.value, 9, i)[0] % 64);
    Tensor ids = Tensor::from_vector(id_values, {2, 16});
    Tensor logits;
    {
      autograd::NoGradGuard no_grad;
      logits = model->forward(ids);
    }

    TempDir dir;
    const std::string path = dir.file("performer.safetensors");
    train::CheckpointInfo info;
    info.step = 3;
    train::save_checkpoint(path, *model, nullptr, info);

    rng::manual_seed(seed.value + 12345);  // the loaded model's own initialization differs
    auto loaded = train::load_model(path);
    auto a = model->state_dict(), b = loaded->state_dict();
    ASSERT_EQ(a.size(), b.size());
    int omegas = 0;
    std::map<std::string, std::vector<float>> saved_omega;  // copies: state_dict holds the live buffers
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].first, b[i].first);
      if (a[i].first.ends_with(".omega")) {
        ++omegas;
        saved_omega[a[i].first] = a[i].second.to_vector();
        EXPECT_EQ(a[i].second.to_vector(), b[i].second.to_vector()) << a[i].first;
      }
      if (a[i].first.ends_with(".omega_draw")) {
        EXPECT_EQ(a[i].second.to_int_vector(), b[i].second.to_int_vector()) << a[i].first;
      }
    }
    EXPECT_EQ(omegas, 2);
    {
      autograd::NoGradGuard no_grad;
      loaded->eval();
      EXPECT_EQ(loaded->forward(ids).to_vector(), logits.to_vector()) << "logits differ after the round trip";
      // Streaming decoding of the loaded model equals its parallel pass.
      models::DecodeState st = loaded->start_decoding(2);
      std::vector<Tensor> parts;
      for (int64_t t = 0; t < 16; t += 5)
        parts.push_back(loaded->step(st, contiguous(narrow(ids, 1, t, std::min<int64_t>(5, 16 - t)))));
      EXPECT_LT(max_abs_diff(cat(parts, 1), logits), 1e-4f);
    }
    // Greedy generation is the same token for token.
    train::GenerateOptions gen;
    gen.sampling.temperature = 0;
    gen.max_new_tokens = 12;
    const std::vector<int64_t> prompt = {1, 2, 3, 4};
    EXPECT_EQ(train::generate(*loaded, prompt, gen), train::generate(*model, prompt, gen));
    // The draw seed travelled too: the next redraw is the same in both.
    model->train();
    loaded->train();
    model->set_step(4);
    loaded->set_step(4);
    auto a2 = model->state_dict(), b2 = loaded->state_dict();
    for (size_t i = 0; i < a2.size(); ++i)
      if (a2[i].first.ends_with(".omega")) {
        EXPECT_EQ(a2[i].second.to_vector(), b2[i].second.to_vector()) << a2[i].first << " after a redraw";
        EXPECT_NE(a2[i].second.to_vector(), saved_omega[a2[i].first]) << a2[i].first << " was not redrawn";
      }
  }
}

}  // namespace
}  // namespace eformer::attention
