#include "eformer/ops/activation.h"

#include <algorithm>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {
namespace {

// Calls f(begin, end) over fixed blocks of [0, n), in parallel. Block edges do not depend on the
// thread count, so the split between vector body and scalar tail is the same on any thread count.
template <class F>
void for_blocks(int64_t n, F f) {
  constexpr int64_t kBlock = 4096;
  parallel::parallel_for((n + kBlock - 1) / kBlock, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b * kBlock, std::min(n, (b + 1) * kBlock));
  });
}

constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

// The standard normal CDF Phi(v) = 0.5 (1 + erf(v / sqrt 2)), branch-free, with erf to 1.5e-7
// absolute by Abramowitz & Stegun 7.1.26 (as torch's vectorized CPU erf):
// erfc(z) = t (a1 + t (a2 + ... + t a5)) exp(-z^2), t = 1 / (1 + p z), z >= 0.
// The lower tail Phi(-|v|) = 0.5 erfc(|v| / sqrt 2) is formed directly, without cancellation.
inline float normal_cdf(float v) {
  const float z = std::fabs(v) * kSqrtHalf, t = 1.0f / (1.0f + 0.3275911f * z);
  float poly = 1.061405429f;
  poly = std::fma(poly, t, -1.453152027f);
  poly = std::fma(poly, t, 1.421413741f);
  poly = std::fma(poly, t, -0.284496736f);
  poly = std::fma(poly, t, 0.254829592f);
  const float lower_tail = 0.5f * poly * t * fast_exp(-z * z);
  return v >= 0.0f ? 1.0f - lower_tail : lower_tail;
}

// tanh(u) = 1 - 2 / (exp(2u) + 1), to about 1e-7 absolute; exp overflowing to inf gives 1.
inline float tanh_approx(float u) { return 1.0f - 2.0f / (fast_exp(2.0f * u) + 1.0f); }

}  // namespace

void exp_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = std::exp(x[i]);
  });
}
// d exp(x) = exp(x)
void exp_backward(const float* y, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] * y[i];
  });
}

void log_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = std::log(x[i]);
  });
}
// d log(x) = 1 / x
void log_backward(const float* x, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] / x[i];
  });
}

void sqrt_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = std::sqrt(x[i]);
  });
}
// d sqrt(x) = 1 / (2 sqrt(x))
void sqrt_backward(const float* y, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] / (2.0f * y[i]);
  });
}

void tanh_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = std::tanh(x[i]);
  });
}
// d tanh(x) = 1 - tanh(x)^2
void tanh_backward(const float* y, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
  });
}

void sigmoid_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = 1.0f / (1.0f + fast_exp(-x[i]));
  });
}
// d sigmoid(x) = sigmoid(x) (1 - sigmoid(x))
void sigmoid_backward(const float* y, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
  });
}

void relu_forward(const float* x, float* y, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}
// y > 0 exactly where x > 0; the gradient at 0 is 0 (as in torch).
void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = dy[i];  // loaded unconditionally, so the select vectorizes
      dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
  });
}

void gelu_forward(const float* x, float* y, int64_t n, bool tanh_approximation) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    if (tanh_approximation) {
      for (int64_t i = i0; i < i1; ++i) {
        const float v = x[i], u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
        y[i] = 0.5f * v * (1.0f + tanh_approx(u));
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) y[i] = x[i] * normal_cdf(x[i]);
    }
  });
}
// exact: d/dx = Phi(x) + x phi(x); tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2)
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n, bool tanh_approximation) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    if (tanh_approximation) {
      for (int64_t i = i0; i < i1; ++i) {
        const float v = x[i], t = tanh_approx(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
        const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        const float v = x[i];
        const float cdf = normal_cdf(v), pdf = kInvSqrt2Pi * fast_exp(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
      }
    }
  });
}

void elu_forward(const float* x, float* y, int64_t n, float alpha) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > 0.0f ? x[i] : alpha * std::expm1(x[i]);
  });
}
// d/dx = 1 for x > 0, alpha exp(x) otherwise
void elu_backward(const float* x, const float* dy, float* dx, int64_t n, float alpha) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * alpha * std::exp(x[i]);
  });
}

void softplus_forward(const float* x, float* y, int64_t n, float beta, float threshold) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float bx = beta * x[i];
      y[i] = bx > threshold ? x[i] : std::log1p(std::exp(bx)) / beta;
    }
  });
}
// d/dx = sigmoid(beta x), and 1 where beta x > threshold
void softplus_backward(const float* x, const float* dy, float* dx, int64_t n, float beta, float threshold) {
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float bx = beta * x[i];
      dx[i] = bx > threshold ? dy[i] : dy[i] / (1.0f + std::exp(-bx));
    }
  });
}

}  // namespace kernels

namespace {

// Runs forward(x, y, n) on a contiguous float copy of x_in and records backward(saved, dy, dx, n),
// where `saved` is the output (save_output) or the input.
template <class Forward, class Backward>
Tensor unary(const char* name, const Tensor& x_in, bool save_output, Forward forward, Backward backward) {
  x_in.check_dtype(DType::Float32, name);
  Tensor x = x_in.contiguous_data();
  Tensor out = Tensor::empty(x.shape());
  forward(x.data<float>(), out.data<float>(), x.numel());
  Tensor saved = save_output ? out.detach() : x.detach();
  return autograd::record(name, out, {x_in}, [saved, backward](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(saved.shape());
    backward(saved.data<float>(), gc.data<float>(), dx.data<float>(), saved.numel());
    return std::vector<Tensor>{dx};
  });
}

}  // namespace

Tensor exp(const Tensor& x) { return unary("exp", x, true, kernels::exp_forward, kernels::exp_backward); }
Tensor log(const Tensor& x) { return unary("log", x, false, kernels::log_forward, kernels::log_backward); }
Tensor sqrt(const Tensor& x) { return unary("sqrt", x, true, kernels::sqrt_forward, kernels::sqrt_backward); }
Tensor tanh(const Tensor& x) { return unary("tanh", x, true, kernels::tanh_forward, kernels::tanh_backward); }
Tensor sigmoid(const Tensor& x) {
  return unary("sigmoid", x, true, kernels::sigmoid_forward, kernels::sigmoid_backward);
}
Tensor relu(const Tensor& x) { return unary("relu", x, true, kernels::relu_forward, kernels::relu_backward); }

Tensor gelu(const Tensor& x, bool tanh_approximation) {
  return unary(
      "gelu", x, false,
      [tanh_approximation](const float* in, float* y, int64_t n) {
        kernels::gelu_forward(in, y, n, tanh_approximation);
      },
      [tanh_approximation](const float* in, const float* dy, float* dx, int64_t n) {
        kernels::gelu_backward(in, dy, dx, n, tanh_approximation);
      });
}

Tensor elu(const Tensor& x, float alpha) {
  return unary(
      "elu", x, false,
      [alpha](const float* in, float* y, int64_t n) { kernels::elu_forward(in, y, n, alpha); },
      [alpha](const float* in, const float* dy, float* dx, int64_t n) {
        kernels::elu_backward(in, dy, dx, n, alpha);
      });
}

Tensor softplus(const Tensor& x, float beta, float threshold) {
  EF_CHECK(beta != 0.0f, ValueError, "softplus: beta must be nonzero, got ", beta);
  return unary(
      "softplus", x, false,
      [beta, threshold](const float* in, float* y, int64_t n) {
        kernels::softplus_forward(in, y, n, beta, threshold);
      },
      [beta, threshold](const float* in, const float* dy, float* dx, int64_t n) {
        kernels::softplus_backward(in, dy, dx, n, beta, threshold);
      });
}

}  // namespace eformer
