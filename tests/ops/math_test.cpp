// Activations, softmax, layer norm, dropout, cross-entropy: kernels alone, error messages, and
// results that do not depend on the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer {
namespace {

using testing::normal;

template <class E, class F>
std::string message_of(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception of the expected type";
  return "";
}

TEST(MathKernels, FastExpIsAccurate) {
  for (float x = -87.0f; x < 88.0f; x += 0.37f) {
    const float e = kernels::fast_exp(x), ref = std::exp(x);
    EXPECT_NEAR(e, ref, 3e-7f * ref) << "x = " << x;
  }
  EXPECT_EQ(kernels::fast_exp(-INFINITY), 0.0f);
  EXPECT_EQ(kernels::fast_exp(-100.0f), 0.0f);
  EXPECT_TRUE(std::isinf(kernels::fast_exp(100.0f)));
  EXPECT_TRUE(std::isnan(kernels::fast_exp(NAN)));
}

TEST(MathKernels, SoftmaxRowsSumToOneAndBackwardIsOrthogonal) {
  const float x[6] = {1, 2, 3, -1, 0, 1000};
  float y[6], dx[6];
  kernels::softmax_forward(x, y, 2, 3, 1);
  EXPECT_NEAR(y[0] + y[1] + y[2], 1.0f, 1e-6f);
  EXPECT_NEAR(y[2], std::exp(3.0f) / (std::exp(1.0f) + std::exp(2.0f) + std::exp(3.0f)), 1e-6f);
  EXPECT_EQ(y[5], 1.0f);
  // A constant upstream gradient does not change a softmax: dx = 0.
  const float dy[6] = {2, 2, 2, 2, 2, 2};
  kernels::softmax_backward(y, dy, dx, 2, 3, 1);
  for (float v : dx) EXPECT_NEAR(v, 0.0f, 1e-6f);
  // The same numbers along a non-last dim ([1, 3, 2] normalized over the middle).
  const float xt[6] = {1, -1, 2, 0, 3, 1000};
  float yt[6];
  kernels::softmax_forward(xt, yt, 1, 3, 2);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(yt[2 * j], y[j]);
}

TEST(MathKernels, LayerNormRowHasZeroMeanUnitVariance) {
  const float x[4] = {1, 2, 3, 6};
  float y[4], mean, rstd;
  kernels::layer_norm_forward(x, nullptr, nullptr, y, &mean, &rstd, 1, 4, 0.0f);
  EXPECT_FLOAT_EQ(mean, 3.0f);
  EXPECT_FLOAT_EQ(rstd, 1.0f / std::sqrt(3.5f));
  float s = 0, s2 = 0;
  for (float v : y) s += v, s2 += v * v;
  EXPECT_NEAR(s, 0.0f, 1e-6f);
  EXPECT_NEAR(s2 / 4, 1.0f, 1e-6f);
}

TEST(MathKernels, CrossEntropyOfUniformLogitsIsLogC) {
  const float logits[8] = {0, 0, 0, 0, 5, 5, 5, 5};
  const int64_t target[2] = {2, -100};
  float loss[2], lse[2], dlogits[8];
  kernels::cross_entropy_forward(logits, target, loss, lse, 2, 4, -100);
  EXPECT_NEAR(loss[0], std::log(4.0f), 1e-6f);
  EXPECT_EQ(loss[1], 0.0f);
  const float dloss[2] = {1, 1};
  kernels::cross_entropy_backward(logits, target, lse, dloss, dlogits, 2, 4, -100);
  EXPECT_NEAR(dlogits[0], 0.25f, 1e-6f);
  EXPECT_NEAR(dlogits[2], -0.75f, 1e-6f);
  for (int c = 4; c < 8; ++c) EXPECT_EQ(dlogits[c], 0.0f);
}

TEST(MathOps, ErrorMessagesNameTheValue) {
  Tensor x = Tensor::zeros({3, 4});
  EXPECT_NE(message_of<ValueError>([&] { dropout(x, 1.5f); }).find("p = 1.5"), std::string::npos);
  Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 7, 1}, {3});
  std::string msg = message_of<IndexError>([&] { cross_entropy(x, bad); });
  EXPECT_NE(msg.find("target 7 at position 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 classes"), std::string::npos) << msg;
  msg = message_of<ShapeError>([&] { cross_entropy(x, Tensor::zeros({3})); });
  EXPECT_NE(msg.find("int64"), std::string::npos) << msg;
  msg = message_of<ShapeError>([&] { layer_norm(x, {3}); });
  EXPECT_NE(msg.find("[3]"), std::string::npos) << msg;
  msg = message_of<ShapeError>([&] { layer_norm(x, {4}, Tensor::zeros({5})); });
  EXPECT_NE(msg.find("weight has shape [5]"), std::string::npos) << msg;
  msg = message_of<ValueError>([&] { parse_reduction("avg"); });
  EXPECT_NE(msg.find("'avg'"), std::string::npos) << msg;
  EXPECT_THROW(softmax(x, 2), IndexError);
}

TEST(MathOps, ResultsDoNotDependOnThreadCount) {
  const int threads = parallel::num_threads();
  rng::Generator gen(1);
  Tensor x = normal({523, 301}, gen), w = normal({301}, gen), b = normal({301}, gen),
         g = normal({523, 301}, gen);
  Tensor target = Tensor::from_vector(std::vector<int64_t>(523, 5), {523});
  auto run = [&] {
    std::vector<std::vector<float>> results;
    Tensor xs = x.detach(), ws = w.detach(), bs = b.detach();
    set_requires_grad(xs, true), set_requires_grad(ws, true), set_requires_grad(bs, true);
    Tensor y = layer_norm(xs, {301}, ws, bs);
    Tensor z = add(add(softmax(y, -1), log_softmax(y, 0)), gelu(y));
    Tensor loss = add(sum(mul(z, g)), cross_entropy(y, target));
    backward(loss);
    rng::manual_seed(9);
    results.push_back(dropout(x, 0.5f).to_vector());
    for (const Tensor& t : {y, z, loss, grad(xs), grad(ws), grad(bs)}) results.push_back(t.to_vector());
    return results;
  };
  parallel::set_num_threads(1);
  auto one = run();
  parallel::set_num_threads(7);
  auto many = run();
  parallel::set_num_threads(threads);
  ASSERT_EQ(one.size(), many.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], many[i]) << "result " << i;
}

}  // namespace
}  // namespace eformer
