// Pointwise activations and transcendental functions: exp, log, sqrt, tanh, sigmoid, relu, gelu,
// elu, softplus. Each has a forward and a backward kernel over flat float arrays; the public
// functions attach the backward. Results are bit-identical on any thread count: work is split at
// fixed block boundaries, and every element is computed by the same code path.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
// 0.5 x (1 + erf(x / sqrt 2)); with tanh_approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// (torch's approximate='tanh').
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
// x for x > 0, alpha (exp(x) - 1) otherwise.
Tensor elu(const Tensor& x, float alpha = 1.0f);
// log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch semantics).
Tensor softplus(const Tensor& x, float beta = 1.0f, float threshold = 20.0f);

namespace kernels {

// exp(x) in float to about 1 ulp, branch-free so loops over it vectorize: exp(x) = 2^n exp(r) with
// n = round(x / ln 2), r = x - n ln 2 split in two constants (Cody-Waite), exp(r) = 1 + r + r^2 P(r)
// (the Cephes expf polynomial). x is clamped to [-88, 88.72]: below -87.68, n = -127 makes the scale
// bits 0, so the result is exactly 0 (exp(-inf) = 0); from 88.38, n = 128 makes it inf (a little
// before float's limit, 88.72). NaN propagates (through the clamps and r). Meant for arguments <= 0
// (softmax, losses), or where overflow to inf gives the right limit (sigmoid, gelu).
inline float fast_exp(float x) {
  const float xc = std::min(std::max(x, -88.0f), 88.72283f);  // in this order NaN stays NaN
  // Round x / ln 2 to the nearest integer by adding 1.5 * 2^23 (floorf does not vectorize).
  const float shifted = std::fma(xc, 1.44269504088896341f, 12582912.0f);
  const float n = shifted - 12582912.0f;
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float er = std::fma(p, r * r, r) + 1.0f;
  const int32_t n_int = std::bit_cast<int32_t>(shifted) - 0x4B400000;
  return er * std::bit_cast<float>((n_int + 127) << 23);
}

// All kernels: x, y, dy, dx [n], contiguous. `y` is the forward output where the backward uses it.
void exp_forward(const float* x, float* y, int64_t n);
void exp_backward(const float* y, const float* dy, float* dx, int64_t n);
void log_forward(const float* x, float* y, int64_t n);
void log_backward(const float* x, const float* dy, float* dx, int64_t n);
void sqrt_forward(const float* x, float* y, int64_t n);
void sqrt_backward(const float* y, const float* dy, float* dx, int64_t n);
void tanh_forward(const float* x, float* y, int64_t n);
void tanh_backward(const float* y, const float* dy, float* dx, int64_t n);
void sigmoid_forward(const float* x, float* y, int64_t n);
void sigmoid_backward(const float* y, const float* dy, float* dx, int64_t n);
void relu_forward(const float* x, float* y, int64_t n);
void relu_backward(const float* y, const float* dy, float* dx, int64_t n);
void gelu_forward(const float* x, float* y, int64_t n, bool tanh_approximation);
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n, bool tanh_approximation);
void elu_forward(const float* x, float* y, int64_t n, float alpha);
void elu_backward(const float* x, const float* dy, float* dx, int64_t n, float alpha);
void softplus_forward(const float* x, float* y, int64_t n, float beta, float threshold);
void softplus_backward(const float* x, const float* dy, float* dx, int64_t n, float beta, float threshold);

}  // namespace kernels
}  // namespace eformer
