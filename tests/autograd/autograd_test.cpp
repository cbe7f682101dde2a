#include <gtest/gtest.h>

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
