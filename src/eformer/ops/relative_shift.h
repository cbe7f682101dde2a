// The relative shift of Transformer-XL (Dai et al. 2019, appendix B): position scores computed
// once per relative distance, x[..., i, p] = (q_i + v)^T W_{k,R} R_{K-1-p} for the K distances
// K-1, ..., 0, become scores per (query, key) pair by shifting row i left by N - 1 - i:
//   out[..., i, j] = x[..., i, j + N - 1 - i]   (the distance of query i to key j is K - N + i - j)
// for the keys j <= K - N + i a causal query may see (queries are the last N of the K keys, the
// bottom-right alignment); the other entries are -inf, so the shift is also the causal mask. This
// is a copy of each row at an offset, O(N K), with no [N, K, d] gather of encodings.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// x [..., N, K] (N <= K) -> [..., N, K] as above; the gradient of the masked entries is 0.
Tensor relative_shift(const Tensor& x);

namespace kernels {
// x, out [outer, N, K].
void relative_shift_forward(const float* x, float* out, int64_t outer, int64_t N, int64_t K);
// g, dx [outer, N, K]: dx[o, i, j + N - 1 - i] = g[o, i, j] for the visible j, else 0.
void relative_shift_backward(const float* g, float* dx, int64_t outer, int64_t N, int64_t K);
}  // namespace kernels

}  // namespace eformer
