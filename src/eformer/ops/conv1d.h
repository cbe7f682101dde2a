// Depthwise 1-D convolution over the sequence axis of x [B, N, C] (sequence-major, as everywhere in
// eformer): each channel c has its own K-tap filter weight[c, :]. With pad_left P,
//
//   out[b, t, c] = bias[c] + sum_{k < K} weight[c, k] * x[b, t + k - P, c]   (zero outside [0, N))
//
// causal: P = K - 1, so out[t] = bias + sum_{j < K} weight[c, K-1-j] * x[t-j] and never sees the
// future. In PyTorch terms, with xt = x.transpose(1, 2) [B, C, N]:
//   F.conv1d(xt, weight.unsqueeze(1), bias, padding=K-1, groups=C)[..., :N].transpose(1, 2)
// centred ("same"): P = (K-1)/2 on the left and K-1-P on the right, so for even K the extra
// position of padding goes on the RIGHT (out[t] reads x[t - K/2 + 1 .. t + K/2]), as in torch's
// padding="same":
//   F.conv1d(xt, weight.unsqueeze(1), bias, padding="same", groups=C).transpose(1, 2)
//   == F.conv1d(F.pad(xt, (P, K-1-P)), weight.unsqueeze(1), bias, groups=C).transpose(1, 2)
// Note torch's conv1d is a cross-correlation, like the formula above (no kernel flip).
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// x [B, N, C], weight [C, K], bias [C] or an undefined Tensor -> [B, N, C]. Gradients for x,
// weight and bias.
Tensor depthwise_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                        bool causal = false);

namespace kernels {
// x, out [B, N, C]; weight [C, K]; bias [C] or null. pad_left = K-1 (causal) or (K-1)/2 (centred).
void depthwise_conv1d_forward(const float* x, const float* weight, const float* bias, float* out, int64_t B,
                              int64_t N, int64_t C, int64_t K, int64_t pad_left);
// g, x [B, N, C]; weight [C, K] -> dx [B, N, C], dweight [C, K], dbias [C]; any output may be null
// (x is read only for dweight and weight only for dx, so each may be null when that output is).
// The weight and bias reductions over (b, t) use fixed blocks summed in a fixed order, so the
// result does not depend on the thread count.
void depthwise_conv1d_backward(const float* g, const float* x, const float* weight, float* dx, float* dweight,
                               float* dbias, int64_t B, int64_t N, int64_t C, int64_t K, int64_t pad_left);
}  // namespace kernels

}  // namespace eformer
