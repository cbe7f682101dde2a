// The demo: a 2-64-64-4 GELU MLP trained full-batch with AdamW on a synthetic 4-class problem
// (points from N(0, I) in the plane, labelled by which of four rings they fall in). It prints the loss
// every --print-every steps; the last line gives the loss bit-exactly (hex float),
// which tests/python/test_mlp_determinism.py reproduces from Python on 1 and 2 threads.
#include "demo.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "common.h"
#include "eformer/eformer.h"

namespace eformer::cli {
namespace {

struct DemoOptions {
  int64_t steps = 300;
  int64_t print_every = 50;
  uint64_t seed = 0;
  int threads = 0;  // 0: OpenMP's default
  int64_t points = 1024;
};

int64_t parse_int(const char* flag, const char* value) { return cli::parse_int("demo", flag, value); }

DemoOptions parse(int argc, char** argv) {
  DemoOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: eformer demo [--steps N] [--seed S] [--threads T] [--points P] [--print-every K]\n"
          "Trains a 2-64-64-4 GELU MLP with AdamW (lr 1e-2) on P points labelled by ring; prints the loss\n"
          "every K steps and the final loss (decimal and hex) and accuracy.\n");
      std::exit(0);
    }
    EF_CHECK(i + 1 < argc, ValueError, "demo: ", a, " needs a value");
    const char* v = argv[++i];
    if (a == "--steps") o.steps = parse_int("--steps", v);
    else if (a == "--seed") o.seed = uint64_t(parse_int("--seed", v));
    else if (a == "--threads") cli::set_threads("demo", v), o.threads = parallel::num_threads();
    else if (a == "--points") o.points = parse_int("--points", v);
    else if (a == "--print-every") o.print_every = parse_int("--print-every", v);
    else throw ValueError("demo: unknown option '" + a + "'; see eformer demo --help");
  }
  EF_CHECK(o.steps >= 1, ValueError, "demo: --steps must be at least 1, got ", o.steps);
  EF_CHECK(o.points >= 1 && o.points <= (1 << 24), ValueError, "demo: --points must be 1 to 16777216, got ",
           o.points);
  EF_CHECK(o.print_every >= 1, ValueError, "demo: --print-every must be at least 1, got ", o.print_every);
  return o;
}

Tensor randn_scaled(const Shape& shape, float scale) {
  Tensor t = Tensor::empty(shape);
  rng::normal_(t.data<float>(), t.numel());
  Tensor w = mul_scalar(t, scale);
  set_requires_grad(w, true);
  return w;
}

// Ring index by radius: thresholds near the quartiles of the Rayleigh distribution.
Tensor ring_labels(const Tensor& x) {
  Tensor y = Tensor::empty({x.shape()[0]}, DType::Int64);
  const float* p = x.data<float>();
  for (int64_t i = 0; i < x.shape()[0]; ++i) {
    double r = std::sqrt(double(p[2 * i]) * p[2 * i] + double(p[2 * i + 1]) * p[2 * i + 1]);
    y.data<int64_t>()[i] = int64_t(r > 0.75) + int64_t(r > 1.18) + int64_t(r > 1.67);
  }
  return y;
}

}  // namespace

int run_demo(int argc, char** argv) {
  DemoOptions o = parse(argc, argv);
  if (o.threads > 0) parallel::set_num_threads(o.threads);
  rng::manual_seed(o.seed);
  Tensor x = Tensor::empty({o.points, 2});
  rng::normal_(x.data<float>(), x.numel());
  Tensor y = ring_labels(x);
  Tensor w1 = randn_scaled({2, 64}, float(1.0 / std::sqrt(2.0))), b1 = Tensor::zeros({64});
  Tensor w2 = randn_scaled({64, 64}, 0.125f), b2 = Tensor::zeros({64});
  Tensor w3 = randn_scaled({64, 4}, 0.125f), b3 = Tensor::zeros({4});
  for (Tensor* b : {&b1, &b2, &b3}) set_requires_grad(*b, true);
  optim::AdamW opt({w1, b1, w2, b2, w3, b3}, optim::AdamWOptions{.lr = 1e-2, .weight_decay = 0.0});

  std::printf("eformer demo: MLP 2-64-64-4 on %lld points, %lld steps, %d threads\n", (long long)o.points,
              (long long)o.steps, parallel::num_threads());
  Tensor loss;
  for (int64_t step = 1; step <= o.steps; ++step) {
    Tensor h = gelu(add(matmul(x, w1), b1));
    h = gelu(add(matmul(h, w2), b2));
    loss = cross_entropy(add(matmul(h, w3), b3), y);
    opt.zero_grad();
    backward(loss);
    opt.step();
    if (step % o.print_every == 0 || step == 1) std::printf("step %5lld  loss %.6f\n", (long long)step, loss.item());
  }
  // Held-out points, drawn after the weights so the training stream does not depend on them.
  Tensor x_test = Tensor::empty({o.points, 2});
  rng::normal_(x_test.data<float>(), x_test.numel());
  Tensor y_test = ring_labels(x_test);
  auto accuracy = [&](const Tensor& inputs, const Tensor& labels) {
    autograd::NoGradGuard no_grad;
    Tensor h = gelu(add(matmul(inputs, w1), b1));
    h = gelu(add(matmul(h, w2), b2));
    Tensor predicted = max(add(matmul(h, w3), b3), 1).second;
    int64_t correct = 0;
    for (int64_t i = 0; i < o.points; ++i) correct += predicted.data<int64_t>()[i] == labels.data<int64_t>()[i];
    return 100.0 * double(correct) / double(o.points);
  };
  std::printf("final loss %.9g (%a)  accuracy: train %.1f%%, held-out %.1f%%\n", loss.item(), loss.item(),
              accuracy(x, y), accuracy(x_test, y_test));
  return 0;
}

}  // namespace eformer::cli
