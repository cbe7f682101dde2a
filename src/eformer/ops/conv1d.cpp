#include "eformer/ops/conv1d.h"

#include <algorithm>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {

namespace {
// weight [C, K] -> [K, C], so the inner loops run over contiguous channels.
std::vector<float> taps_major(const float* weight, int64_t C, int64_t K) {
  std::vector<float> wt(size_t(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * C + c)] = weight[c * K + k];
  return wt;
}
int64_t row_grain(int64_t C, int64_t K) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(C * K, 1)); }
}  // namespace

void depthwise_conv1d_forward(const float* x, const float* weight, const float* bias, float* out, int64_t B,
                              int64_t N, int64_t C, int64_t K, int64_t pad_left) {
  const std::vector<float> wt = taps_major(weight, C, K);
  parallel::parallel_for(B * N, row_grain(C, K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, t = r % N;
      float* po = out + r * C;
      for (int64_t c = 0; c < C; ++c) po[c] = bias ? bias[c] : 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t + k - pad_left;  // out[t] reads x[t + k - P]
        if (src < 0 || src >= N) continue;
        const float* px = x + (b * N + src) * C;
        const float* pw = wt.data() + k * C;
        for (int64_t c = 0; c < C; ++c) po[c] += pw[c] * px[c];
      }
    }
  });
}

void depthwise_conv1d_backward(const float* g, const float* x, const float* weight, float* dx, float* dweight,
                               float* dbias, int64_t B, int64_t N, int64_t C, int64_t K, int64_t pad_left) {
  if (dx) {
    // dx[s] = sum_k weight[k] * g[s - k + P]: the outputs t = s - k + P that read x[s].
    const std::vector<float> wt = taps_major(weight, C, K);
    parallel::parallel_for(B * N, row_grain(C, K), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / N, s = r % N;
        float* pd = dx + r * C;
        std::fill_n(pd, C, 0.0f);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = s - k + pad_left;
          if (t < 0 || t >= N) continue;
          const float* pg = g + (b * N + t) * C;
          const float* pw = wt.data() + k * C;
          for (int64_t c = 0; c < C; ++c) pd[c] += pw[c] * pg[c];
        }
      }
    });
  }
  if (!dweight && !dbias) return;
  // dweight[c, k] = sum_{b,t} g[b, t, c] * x[b, t + k - P, c]; dbias[c] = sum_{b,t} g[b, t, c].
  // Rows (b, t) are cut into blocks whose size depends only on the shape; each block writes its
  // own partial [K + 1, C], and the partials are summed in block order, in double.
  const int64_t rows = B * N, block = std::max<int64_t>(64, (rows + 255) / 256);
  const int64_t blocks = (rows + block - 1) / block, width = (K + 1) * C;
  std::vector<float> partial(size_t(blocks * width), 0.0f);
  parallel::parallel_for(blocks, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      float* pw = partial.data() + q * width;
      for (int64_t r = q * block, r1 = std::min(rows, r + block); r < r1; ++r) {
        const int64_t b = r / N, t = r % N;
        const float* pg = g + r * C;
        for (int64_t k = 0; dweight && k < K; ++k) {
          const int64_t src = t + k - pad_left;
          if (src < 0 || src >= N) continue;
          const float* px = x + (b * N + src) * C;
          float* pk = pw + k * C;
          for (int64_t c = 0; c < C; ++c) pk[c] += pg[c] * px[c];
        }
        float* pb = pw + K * C;
        for (int64_t c = 0; c < C; ++c) pb[c] += pg[c];
      }
    }
  });
  parallel::parallel_for(width, 256, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      double total = 0;
      for (int64_t q = 0; q < blocks; ++q) total += partial[size_t(q * width + e)];
      const int64_t k = e / C, c = e % C;
      if (k < K) {
        if (dweight) dweight[c * K + k] = float(total);
      } else if (dbias) {
        dbias[c] = float(total);
      }
    }
  });
}

}  // namespace kernels

Tensor depthwise_conv1d(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, bool causal) {
  x_in.check_dtype(DType::Float32, "depthwise_conv1d: input");
  weight_in.check_dtype(DType::Float32, "depthwise_conv1d: weight");
  EF_CHECK(x_in.dim() == 3, ShapeError, "depthwise_conv1d: input has shape ", shape_str(x_in.shape()),
           "; expected [batch, seq, channels]");
  const int64_t B = x_in.size(0), N = x_in.size(1), C = x_in.size(2);
  EF_CHECK(weight_in.dim() == 2 && weight_in.size(0) == C && weight_in.size(1) >= 1, ShapeError,
           "depthwise_conv1d: weight has shape ", shape_str(weight_in.shape()), "; expected [", C,
           ", kernel_size >= 1] for an input with ", C, " channels");
  const int64_t K = weight_in.size(1);
  const bool has_bias = bias_in.defined();
  if (has_bias) {
    bias_in.check_dtype(DType::Float32, "depthwise_conv1d: bias");
    EF_CHECK(bias_in.dim() == 1 && bias_in.size(0) == C, ShapeError, "depthwise_conv1d: bias has shape ",
             shape_str(bias_in.shape()), "; expected [", C, "]");
  }
  const int64_t pad_left = causal ? K - 1 : (K - 1) / 2;
  Tensor x = x_in.contiguous_data(), weight = weight_in.contiguous_data();
  Tensor bias = has_bias ? bias_in.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({B, N, C});
  kernels::depthwise_conv1d_forward(x.data<float>(), weight.data<float>(),
                                    has_bias ? bias.data<float>() : nullptr, out.data<float>(), B, N, C, K,
                                    pad_left);
  const bool need_x = requires_grad(x_in), need_w = requires_grad(weight_in),
             need_b = has_bias && requires_grad(bias_in);
  // Save only what the needed gradients read: x for dweight, weight for dx.
  Tensor x_saved = need_w ? x : Tensor(), w_saved = need_x ? weight : Tensor();
  return autograd::record("depthwise_conv1d", out, {x_in, weight_in, bias_in},
                          [x_saved, w_saved, B, N, C, K, pad_left, need_x, need_w, need_b](const Tensor& g) {
                            Tensor gc = g.contiguous_data();
                            Tensor dx = need_x ? Tensor::empty({B, N, C}) : Tensor();
                            Tensor dw = need_w ? Tensor::empty({C, K}) : Tensor();
                            Tensor db = need_b ? Tensor::empty({C}) : Tensor();
                            kernels::depthwise_conv1d_backward(
                                gc.data<float>(), need_w ? x_saved.data<float>() : nullptr,
                                need_x ? w_saved.data<float>() : nullptr, need_x ? dx.data<float>() : nullptr,
                                need_w ? dw.data<float>() : nullptr, need_b ? db.data<float>() : nullptr, B,
                                N, C, K, pad_left);
                            return std::vector<Tensor>{dx, dw, db};
                          });
}

}  // namespace eformer
