// The kernelized-attention core, shared by every feature map (feature_maps.h): given features
// phi_q [B, H, N, F], phi_k [B, H, M, F], values v [B, H, M, dv] and the keys' log-scales
// l [B, H, M] (undefined = 0),
//     out_i = sum_j w_ij v_j / sum_j w_ij,    w_ij = (phi_q_i . phi_k_j) exp(l_j),
// over the keys j that query i may attend (key_mask; causal: j <= i). Costs O(N F dv), never
// materializes the N x M weights (Performer, Choromanski et al. 2020, eq. 5; causal by prefix sums,
// sec. 2.6 / Katharopoulos et al. 2020, eq. 9).
//
// Stability. exp(l_j) is applied as exp(l_j - mu), mu the maximum of the l seen so far (causal: a
// running maximum, so no future key changes a past output, even by rounding; the state is rescaled
// when the maximum grows, as in online softmax). Every factor is then <= 1. A denominator with
// |den| < kMinDenominator is replaced by +-kMinDenominator (and receives no gradient): a query with
// no attendable key, or whose features are all 0, outputs 0 instead of NaN. With non-negative
// features (positive, relu, elu + 1, exp) |out_i| <= max_j |v_j| always.
//
// Causal mode is computed in chunks of kKernelizedChunk queries: within a chunk the weights are a
// small matrix, across chunks they pass through the state S = sum phi_k v^T, z = sum phi_k. The
// backward recomputes the states (forward sweep for dq, reverse sweep for dk and dv); it saves only
// the output and the denominators, never an N x F x dv tensor. The bidirectional backward reuses the
// forward's S, z and maximum (saved per head, F x dv floats).
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer::attention {

inline constexpr float kMinDenominator = 1e-30f;

// A pointwise feature map the kernel applies itself: with map != Identity, phi_q and phi_k are the raw
// q and k, phi = f(x) is computed as each chunk is loaded and the gradient leaves as dphi o f'(x), so
// the features are never stored and cost no pass of their own. EluPlusOne: the Linear Transformer's
// elu(x) + 1 (Katharopoulos et al. 2020, eq. 7); Relu: max(x, 0).
enum class PointwiseMap { Identity, EluPlusOne, Relu };

// Differentiable w.r.t. phi_q, phi_k, v and log_scale_k. causal needs N == M. key_mask: Bool [B, M].
Tensor kernelized_attention(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, const Tensor& log_scale_k,
                            bool causal, const Tensor& key_mask = {}, PointwiseMap map = PointwiseMap::Identity);

// The recurrent form of the causal pass: S [B, H, F, dv], z [B, H, F] and the running maximum
// mu [B, H] of the log-scales (S and z are scaled by exp(-mu)); empty before the first token.
struct KernelizedState {
  Tensor s, z, mu;
  int64_t length = 0;  // tokens consumed
};
// Consumes T new tokens (phi_q [B, H, T, F], phi_k, v, log_scale_k as above) and returns their
// outputs [B, H, T, dv], equal to the parallel causal pass over everything consumed so far. O(T F dv)
// whatever the length. No gradient.
Tensor kernelized_attention_step(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                                 const Tensor& log_scale_k, KernelizedState& state);

}  // namespace eformer::attention

namespace eformer::kernels {

inline constexpr int64_t kKernelizedChunk = 64;

}  // namespace eformer::kernels
