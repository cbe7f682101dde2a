#include <gtest/gtest.h>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer {

TEST(Autograd, ChainRuleAndAccumulation) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  set_requires_grad(x, true);
  // y = sum(x * x + 3 x) -> dy/dx = 2x + 3; x is used twice, gradients accumulate.
  Tensor y = sum(add(mul(x, x), mul_scalar(x, 3)));
  backward(y);
  EXPECT_EQ(grad(x).to_vector(), (std::vector<float>{5, 7, 9}));
  backward(sum(x));  // a second backward accumulates
  EXPECT_EQ(grad(x).to_vector(), (std::vector<float>{6, 8, 10}));
}

// The hook data-parallel training overlaps its gradient sums with: called once per leaf, with the leaf's
// .grad already complete, for a leaf used late in the forward before the backward reaches one used early; the
// gradients are the same bits as without it.
TEST(Autograd, LeafReadyHookFiresOncePerLeafAsSoonAsItsGradientIsComplete) {
  auto run = [](bool hooked, std::vector<std::string>* order) {
    rng::manual_seed(3);
    using testing::normal;
    Tensor a = normal({4, 4}), b = normal({4, 4}), c = normal({4, 4}), unused = normal({2});
    for (const Tensor& t : {a, b, c, unused}) set_requires_grad(t, true);
    // a is used first and again later (its gradient completes last, with b's), c only at the end (first).
    Tensor h = matmul(tanh(matmul(a, b)), a);
    Tensor loss = sum(mul(matmul(h, c), h));
    std::vector<std::pair<const AutogradMeta*, std::string>> names = {
        {a.autograd_meta().get(), "a"}, {b.autograd_meta().get(), "b"}, {c.autograd_meta().get(), "c"}};
    autograd::LeafReady hook;
    if (hooked)
      hook = [&](const AutogradMeta* leaf) {
        for (auto& [meta, name] : names)
          if (meta == leaf) {
            const Tensor& t = name == "a" ? a : name == "b" ? b : c;
            EXPECT_TRUE(grad(t).defined()) << name;  // complete when announced
            order->push_back(name);
          }
      };
    autograd::backward({loss}, {}, false, hook);
    EXPECT_FALSE(grad(unused).defined());
    return std::vector<std::vector<float>>{grad(a).to_vector(), grad(b).to_vector(), grad(c).to_vector()};
  };
  std::vector<std::string> order;
  auto plain = run(false, nullptr);
  auto hooked = run(true, &order);
  EXPECT_EQ(plain, hooked);
  // c completes at the first node the backward runs; a and b at the last one (a b, where a's second use is).
  EXPECT_EQ(order, (std::vector<std::string>{"c", "a", "b"}));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::full({2}, 1.0);
  set_requires_grad(x, true);
  Tensor y;
  {
    autograd::NoGradGuard guard;
    y = mul_scalar(x, 2);
  }
  EXPECT_FALSE(requires_grad(y));
  EXPECT_THROW(backward(sum(y)), ValueError);
}

TEST(Autograd, FreedGraphIsAClearError) {
  Tensor x = Tensor::full({2}, 1.0);
  set_requires_grad(x, true);
  Tensor y = sum(mul(x, x));
  backward(y);
  EXPECT_THROW(backward(y), ValueError);
  Tensor z = sum(mul(x, x));
  backward(z, {}, /*retain_graph=*/true);
  backward(z);
}

TEST(Autograd, NonLeafCannotChangeRequiresGrad) {
  Tensor x = Tensor::full({2}, 1.0);
  set_requires_grad(x, true);
  Tensor y = mul_scalar(x, 2);
  EXPECT_THROW(set_requires_grad(y, false), ValueError);
  EXPECT_THROW(backward(y), ShapeError);  // implicit gradient needs a one-element output
}

struct Cube : autograd::Function {
  Tensor saved;
  Tensor forward(const std::vector<Tensor>& in) override {
    saved = in[0].detach();
    return mul(mul(in[0], in[0]), in[0]);
  }
  std::vector<Tensor> backward(const Tensor& g) override {
    return {mul(g, mul_scalar(mul(saved, saved), 3))};
  }
};

TEST(Autograd, CustomFunctionUsesItsHandWrittenBackward) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, -2}, {2});
  set_requires_grad(x, true);
  Tensor y = autograd::Function::apply(std::make_shared<Cube>(), {x});
  EXPECT_EQ(y.to_vector(), (std::vector<float>{1, -8}));
  backward(sum(y));
  EXPECT_EQ(grad(x).to_vector(), (std::vector<float>{3, 12}));
}

TEST(Autograd, DeepChainDoesNotOverflowTheStack) {
  Tensor x = Tensor::full({1}, 1.0);
  set_requires_grad(x, true);
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = add_scalar(y, 1);
  backward(sum(y));
  EXPECT_EQ(grad(x).to_vector(), (std::vector<float>{1}));
}

}  // namespace eformer
