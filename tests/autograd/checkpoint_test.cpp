#include <gtest/gtest.h>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer {
namespace {

Tensor random_leaf(const Shape& s) { return testing::leaf(testing::normal(s)); }

// A block with a random draw inside: tanh-free MLP-ish map plus noise from the default generator,
// so a recompute that did not replay the generator would give different gradients.
Tensor noisy_block(const Tensor& x, const Tensor& w) {
  Tensor noise = Tensor::empty(x.shape());
  rng::normal_(noise.data<float>(), noise.numel());
  Tensor h = matmul(add(x, mul_scalar(noise, 0.1f)), w);
  return mul(h, h);
}

}  // namespace

TEST(Checkpoint, GradientsEqualThePlainComputation) {
  rng::manual_seed(11);
  Tensor x = random_leaf({4, 8}), w = random_leaf({8, 8});

  rng::manual_seed(5);
  backward(sum(noisy_block(x, w)));
  std::vector<float> gx_plain = grad(x).to_vector(), gw_plain = grad(w).to_vector();
  auto after_plain = rng::default_generator().state();
  zero_grad(x);
  zero_grad(w);

  rng::manual_seed(5);
  // w is captured by the function, not passed as an input: its gradient must still arrive.
  Tensor y = autograd::checkpoint([&](const std::vector<Tensor>& in) { return noisy_block(in[0], w); }, {x});
  EXPECT_EQ(rng::default_generator().state(), after_plain);
  backward(sum(y));
  EXPECT_EQ(grad(x).to_vector(), gx_plain);
  EXPECT_EQ(grad(w).to_vector(), gw_plain);
  // The recompute replays the forward's draws and leaves the generator where it was.
  EXPECT_EQ(rng::default_generator().state(), after_plain);
}

TEST(Checkpoint, StoresNoIntermediatesInForward) {
  rng::manual_seed(3);
  Tensor x = random_leaf({64, 256}), w = random_leaf({256, 256});
  auto chain = [&](const std::vector<Tensor>& in) {
    Tensor h = in[0];
    for (int i = 0; i < 8; ++i) h = matmul(h, w);
    return h;
  };
  const int64_t base = allocator::stats().live_bytes;
  Tensor plain = chain({x});
  const int64_t held_plain = allocator::stats().live_bytes - base;
  plain = Tensor();
  Tensor ckpt = autograd::checkpoint(chain, {x});
  const int64_t held_ckpt = allocator::stats().live_bytes - base;
  // Plain keeps 8 activations of 64 KiB alive for backward; checkpoint keeps only the output.
  EXPECT_GE(held_plain, 8 * 64 * 256 * 4);
  EXPECT_LE(held_ckpt, 2 * 64 * 256 * 4);
}

}  // namespace eformer
