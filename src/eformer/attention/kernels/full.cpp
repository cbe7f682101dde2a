#include "eformer/attention/kernels/full.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/dropout.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/softmax.h"

namespace eformer::kernels {

void masked_softmax_forward(const float* s, float* p, const bool* key_mask, int64_t B, int64_t H, int64_t N,
                            int64_t M, bool causal) {
  const int64_t rows = B * H * N;
  parallel::parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t row = r0; row < r1; ++row) {
                             const int64_t i = row % N, b = row / (H * N);
                             const bool* km = key_mask ? key_mask + b * M : nullptr;
                             // Keys [0, end) pass the causal rule (j <= i + M - N); key_mask removes some of
                             // them.
                             const int64_t end = causal ? std::clamp<int64_t>(i + (M - N) + 1, 0, M) : M;
                             const float* sr = s + row * M;
                             float* pr = p + row * M;
                             float m = -std::numeric_limits<float>::infinity();
                             bool nan = false;  // max() skips NaN; softmax of a NaN row is NaN
                             for (int64_t j = 0; j < end; ++j)
                               if (!km || km[j]) m = std::max(m, sr[j]), nan |= std::isnan(sr[j]);
                             std::fill(pr, pr + M, 0.0f);
                             if (nan) m = std::numeric_limits<float>::quiet_NaN();  // every p below is NaN
                             if (m == -std::numeric_limits<float>::infinity())
                               continue;  // nothing attendable: the row stays 0
                             float sum = 0.0f;
                             for (int64_t j = 0; j < end; ++j) {
                               if (km && !km[j]) continue;
                               pr[j] = fast_exp(sr[j] - m);
                               sum += pr[j];
                             }
                             const float inv = 1.0f / sum;
                             for (int64_t j = 0; j < end; ++j) pr[j] *= inv;
                           }
                         });
}

}  // namespace eformer::kernels

namespace eformer::attention {

Tensor masked_softmax(const Tensor& scores, const AttentionOptions& opts) {
  scores.check_dtype(DType::Float32, "masked_softmax");
  EF_CHECK(scores.dim() == 4, ShapeError, "masked_softmax: scores is ", scores.describe(),
           "; expected [batch, heads, queries, keys]");
  const int64_t B = scores.size(0), H = scores.size(1), N = scores.size(2), M = scores.size(3);
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  if (km.defined()) {
    EF_CHECK(km.dtype() == DType::Bool && km.dim() == 2 && km.size(0) == B && km.size(1) == M, ShapeError,
             "masked_softmax: key_mask is ", km.describe(), "; expected bool [", B, ", ", M, "]");
  }
  Tensor s = scores.contiguous_data();
  Tensor out = Tensor::empty(s.shape());
  if (out.numel() > 0)
    kernels::masked_softmax_forward(s.data<float>(), out.data<float>(),
                                    km.defined() ? km.data<bool>() : nullptr, B, H, N, M, opts.causal);
  Tensor p = out.detach();
  return autograd::record("masked_softmax", out, {scores}, [p, B, H, N, M](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor ds = Tensor::empty(p.shape());
    if (p.numel() > 0)
      kernels::softmax_backward(p.data<float>(), gc.data<float>(), ds.data<float>(), B * H * N, M, 1);
    return std::vector<Tensor>{ds};
  });
}

Tensor full_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  const AttentionDims s = validate_attention("full_attention", q, k, v, opts);
  // O = dropout(softmax(scale q k^T + mask)) v; dropout reserves ceil(B H N M / 4) counters and
  // draws element e of the contiguous [B, H, N, M] probabilities from word e % 4 of block
  // counter + e / 4 (the AttentionOptions::dropout contract, which flash_attention fuses).
  Tensor scores = mul_scalar(matmul(q, k, false, true), s.scale);
  Tensor probs = masked_softmax(scores, opts);
  if (opts.dropout > 0.0f) probs = dropout(probs, opts.dropout, /*training=*/true);
  return matmul(probs, v);
}

}  // namespace eformer::attention
