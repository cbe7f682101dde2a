#include "eformer/optim/optim.h"

#include <gtest/gtest.h>

#include <cmath>

#include "eformer/eformer.h"

namespace eformer::optim {
namespace {

Tensor leaf(const std::vector<float>& values) {
  Tensor t = Tensor::from_vector(values, {int64_t(values.size())});
  set_requires_grad(t, true);
  return t;
}

void set_grad_values(const Tensor& p, const std::vector<float>& g) {
  set_grad(p, Tensor::from_vector(g, p.shape()));
}

TEST(AdamW, MatchesTheUpdateFormula) {
  // Two steps against the formula evaluated in double.
  const std::vector<float> p0 = {1.0f, -2.0f, 0.5f};
  const std::vector<std::vector<float>> grads = {{0.1f, -0.3f, 2.0f}, {-0.2f, 0.4f, 1.0f}};
  AdamWOptions o{0.01, 0.9, 0.99, 1e-8, 0.1};
  Tensor p = leaf(p0);
  AdamW opt({p}, o);
  std::vector<double> ref(p0.begin(), p0.end()), m(3, 0.0), v(3, 0.0);
  for (int t = 1; t <= 2; ++t) {
    set_grad_values(p, grads[t - 1]);
    opt.step();
    for (int i = 0; i < 3; ++i) {
      double g = grads[t - 1][i];
      ref[i] *= 1 - o.lr * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      double denom = std::sqrt(v[i]) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps;
      ref[i] -= o.lr / (1 - std::pow(o.beta1, t)) * m[i] / denom;
    }
    auto got = p.to_vector();
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(got[i], ref[i], 1e-6) << "step " << t << " element " << i;
  }
  EXPECT_EQ(opt.step_count(), 2);
}

TEST(SGD, NesterovMomentumAndWeightDecay) {
  SGDOptions o{0.1, 0.9, 0.0, 0.01, true};
  Tensor p = leaf({1.0f, 2.0f});
  SGD opt({p}, o);
  std::vector<double> ref = {1.0, 2.0}, buf(2, 0.0);
  const std::vector<std::vector<float>> grads = {{0.5f, -1.0f}, {0.25f, 0.75f}, {1.0f, 1.0f}};
  for (size_t s = 0; s < grads.size(); ++s) {
    set_grad_values(p, grads[s]);
    opt.step();
    for (int i = 0; i < 2; ++i) {
      double d = grads[s][i] + o.weight_decay * ref[i];
      buf[i] = s == 0 ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
      d += o.momentum * buf[i];
      ref[i] -= o.lr * d;
    }
    auto got = p.to_vector();
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(got[i], ref[i], 1e-6);
  }
}

TEST(SGD, DampeningAppliesAfterTheFirstStep) {
  Tensor p = leaf({0.0f});
  SGD opt({p}, SGDOptions{1.0, 0.5, 0.5, 0.0, false});
  set_grad_values(p, {1.0f});
  opt.step();  // buf = 1
  EXPECT_FLOAT_EQ(p.to_vector()[0], -1.0f);
  opt.step();  // buf = 0.5 * 1 + 0.5 * 1 = 1
  EXPECT_FLOAT_EQ(p.to_vector()[0], -2.0f);
}

TEST(Optimizer, SkipsParamsWithoutGradAndZeroGradDrops) {
  Tensor a = leaf({1.0f}), b = leaf({1.0f});
  SGD opt({a, b}, SGDOptions{0.5});
  set_grad_values(a, {1.0f});
  opt.step();
  EXPECT_FLOAT_EQ(a.to_vector()[0], 0.5f);
  EXPECT_FLOAT_EQ(b.to_vector()[0], 1.0f);
  opt.zero_grad();
  EXPECT_FALSE(grad(a).defined());
}

TEST(Optimizer, StateRoundTripContinuesIdentically) {
  Tensor p = leaf({1.0f, 2.0f, 3.0f});
  Tensor q = leaf({0.0f, 0.0f});
  AdamW opt({p, q}, AdamWOptions{0.1});
  set_grad_values(p, {0.3f, -0.1f, 0.2f});
  opt.step();
  auto state = opt.state_tensors();
  std::map<std::string, Tensor> saved;
  for (const auto& [name, t] : state) saved[name] = t.clone_data();
  EXPECT_EQ(saved.size(), 4u);  // step, 0.step, 0.exp_avg, 0.exp_avg_sq (q had no grad: no state)
  EXPECT_TRUE(saved.count("0.exp_avg_sq"));

  Tensor p2 = Tensor::from_vector(p.to_vector(), {3});
  set_requires_grad(p2, true);
  Tensor q2 = leaf({0.0f, 0.0f});
  AdamW restored({p2, q2}, AdamWOptions{0.1});
  restored.load_state_tensors(saved);
  EXPECT_EQ(restored.step_count(), 1);
  for (int s = 0; s < 3; ++s) {
    set_grad_values(p, {0.1f * s, 0.2f, -0.3f});
    set_grad_values(p2, {0.1f * s, 0.2f, -0.3f});
    opt.step();
    restored.step();
  }
  EXPECT_EQ(p.to_vector(), p2.to_vector());

  auto bad = saved;
  bad["0.exp_avg"] = Tensor::zeros({2});
  EXPECT_THROW(restored.load_state_tensors(bad), ShapeError);
  bad = saved;
  bad["0.momentum_buffer"] = Tensor::zeros({3});
  EXPECT_THROW(restored.load_state_tensors(bad), ValueError);
  bad = saved;
  bad.erase("step");
  EXPECT_THROW(restored.load_state_tensors(bad), ValueError);
  bad = saved;
  bad["x.step"] = saved["step"];
  EXPECT_THROW(restored.load_state_tensors(bad), ValueError);
  bad = saved;
  bad["step"] = Tensor::scalar(1.0f);
  EXPECT_THROW(restored.load_state_tensors(bad), ShapeError);
}

TEST(Optimizer, ValidatesArguments) {
  Tensor p = leaf({1.0f});
  EXPECT_THROW(AdamW({p}, AdamWOptions{-1.0}), ValueError);
  EXPECT_THROW(AdamW({p}, AdamWOptions{1e-3, 1.0}), ValueError);
  EXPECT_THROW(AdamW({p}, AdamWOptions{1e-3, 0.9, -0.1}), ValueError);
  EXPECT_THROW(AdamW({p}, AdamWOptions{1e-3, 0.9, 0.999, 0.0}), ValueError);
  EXPECT_THROW(AdamW({p}, AdamWOptions{1e-3, 0.9, 0.999, 1e-8, -1.0}), ValueError);
  EXPECT_THROW(AdamW({p}, AdamWOptions{NAN}), ValueError);
  EXPECT_THROW(SGD({p}, SGDOptions{0.1, -0.9}), ValueError);
  EXPECT_THROW(SGD({p}, SGDOptions{0.1, 0.0, 0.0, 0.0, true}), ValueError);
  EXPECT_THROW(SGD({p}, SGDOptions{0.1, 0.9, 0.1, 0.0, true}), ValueError);
  EXPECT_THROW(SGD({}, SGDOptions{0.1}), ValueError);
  EXPECT_THROW(SGD({Tensor::zeros({2})}, SGDOptions{0.1}), ValueError);  // no requires_grad
  EXPECT_THROW(SGD({Tensor::zeros({2}, DType::Int64)}, SGDOptions{0.1}), ValueError);
  EXPECT_THROW(SGD({p, p}, SGDOptions{0.1}), ValueError);
  EXPECT_THROW(SGD({mul_scalar(p, 2.0f)}, SGDOptions{0.1}), ValueError);  // not a leaf
  Tensor base = Tensor::zeros({2, 2});
  Tensor view = base.as_strided({2, 2}, {1, 2}, 0);
  set_requires_grad(view, true);
  EXPECT_THROW(SGD({view}, SGDOptions{0.1}), ValueError);  // non-contiguous
  SGD ok({p}, SGDOptions{0.1});
  EXPECT_THROW(ok.set_lr(-0.1), ValueError);
  ok.set_lr(0.2);
  EXPECT_DOUBLE_EQ(ok.lr(), 0.2);
  EXPECT_DOUBLE_EQ(ok.options().lr, 0.2);
}

TEST(Schedule, WarmupCosine) {
  EXPECT_DOUBLE_EQ(warmup_cosine(0, 4, 12, 1.0, 0.1), 0.25);
  EXPECT_DOUBLE_EQ(warmup_cosine(3, 4, 12, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(warmup_cosine(4, 4, 12, 1.0, 0.1), 1.0);
  EXPECT_NEAR(warmup_cosine(8, 4, 12, 1.0, 0.1), 0.55, 1e-12);  // halfway: the mean of lr and min_lr
  EXPECT_DOUBLE_EQ(warmup_cosine(12, 4, 12, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(warmup_cosine(100, 4, 12, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(warmup_cosine(0, 0, 10, 2.0), 2.0);
  for (int64_t s = 5; s < 12; ++s)
    EXPECT_LT(warmup_cosine(s, 4, 12, 1.0, 0.1), warmup_cosine(s - 1, 4, 12, 1.0, 0.1));
  EXPECT_THROW(warmup_cosine(-1, 4, 12, 1.0), ValueError);
  EXPECT_THROW(warmup_cosine(0, -1, 12, 1.0), ValueError);
  EXPECT_THROW(warmup_cosine(0, 4, 3, 1.0), ValueError);
  EXPECT_THROW(warmup_cosine(0, 4, 12, -1.0), ValueError);
  EXPECT_THROW(warmup_cosine(0, 4, 12, 1.0, 2.0), ValueError);
}

TEST(Clip, ScalesByTheGlobalNorm) {
  Tensor a = leaf({3.0f, 0.0f}), b = leaf({0.0f}), c = leaf({1.0f});
  set_grad_values(a, {3.0f, 0.0f});
  set_grad_values(b, {4.0f});  // c has no gradient: skipped
  float total = clip_grad_norm({a, b, c}, 1.0);
  EXPECT_FLOAT_EQ(total, 5.0f);
  const float coef = float(1.0 / (5.0 + 1e-6));
  EXPECT_FLOAT_EQ(grad(a).to_vector()[0], 3.0f * coef);
  EXPECT_FLOAT_EQ(grad(b).to_vector()[0], 4.0f * coef);
  EXPECT_FALSE(grad(c).defined());
  // Below the limit: untouched.
  set_grad_values(b, {0.5f});
  set_grad_values(a, {0.0f, 0.0f});
  EXPECT_FLOAT_EQ(clip_grad_norm({a, b}, 1.0), 0.5f);
  EXPECT_FLOAT_EQ(grad(b).to_vector()[0], 0.5f);
  EXPECT_THROW(clip_grad_norm({a}, -1.0), ValueError);
}

TEST(Clip, StridedGradientAndThreadIndependence) {
  Tensor p = Tensor::zeros({2, 2});
  set_requires_grad(p, true);
  Tensor g = Tensor::from_vector(std::vector<float>{3, 0, 4, 0}, {2, 2}).as_strided({2, 2}, {1, 2}, 0);
  set_grad(p, g);
  EXPECT_FLOAT_EQ(clip_grad_norm({p}, 2.5), 5.0f);
  EXPECT_NEAR(grad(p).to_vector()[0], 1.5, 1e-6);  // g^T = [[3, 4], [0, 0]]
  EXPECT_NEAR(grad(p).to_vector()[1], 2.0, 1e-6);

  const int64_t n = 200001;
  std::vector<float> big(n);
  for (int64_t i = 0; i < n; ++i) big[i] = std::sin(float(i)) * 0.01f;
  Tensor q = Tensor::zeros({n});
  set_requires_grad(q, true);
  set_grad(q, Tensor::from_vector(big, {n}));
  int saved = parallel::num_threads();
  parallel::set_num_threads(1);
  double one = grad_norm({q});
  parallel::set_num_threads(4);
  double four = grad_norm({q});
  parallel::set_num_threads(saved);
  EXPECT_EQ(one, four);
}

}  // namespace
}  // namespace eformer::optim
