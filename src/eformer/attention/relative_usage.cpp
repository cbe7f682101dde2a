#include "eformer/attention/relative_usage.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const Tensor& weight_of(const RelativeAttention& attn, const std::string& name) {
  auto linear = std::dynamic_pointer_cast<nn::Linear>(attn.child(name));
  EF_CHECK(linear != nullptr, ValueError, "relative_usage: the attention has no Linear '", name, "'");
  return linear->weight();
}

const Tensor& parameter_of(const RelativeAttention& attn, const std::string& name) {
  const Tensor* p = attn.find_parameter(name);
  EF_CHECK(p != nullptr, ValueError, "relative_usage: the attention has no parameter '", name, "'");
  return *p;
}

}  // namespace

Tensor relative_usage(const RelativeAttention& attn, const Tensor& x, const Tensor& memory) {
  autograd::NoGradGuard no_grad;
  const Tensor& u = parameter_of(attn, "content_bias");
  const Tensor& w = parameter_of(attn, "position_bias");
  const int64_t H = u.size(0), d = u.size(1), D = H * d;
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == D, ShapeError, "relative_usage: x is ",
           x.defined() ? x.describe() : std::string("undefined"), "; expected [batch, seq, ", D, "]");
  const bool has_memory = memory.defined() && memory.size(1) > 0;
  EF_CHECK(!has_memory || (memory.dim() == 3 && memory.size(0) == x.size(0) && memory.size(2) == D), ShapeError,
           "relative_usage: memory is ", has_memory ? memory.describe() : std::string(), "; expected [", x.size(0),
           ", M, ", D, "]");
  const int64_t B = x.size(0), N = x.size(1), M = has_memory ? memory.size(1) : 0, K = M + N;
  auto heads = [&](const Tensor& t, const Tensor& weight, int64_t L) {  // [B, L, D] -> [B, H, L, d]
    return permute(reshape(matmul(t, weight, false, true), {B, L, H, d}), {0, 2, 1, 3});
  };
  const Tensor c = has_memory ? cat({memory.detach(), x.detach()}, 1) : x.detach();
  const Tensor q = heads(x.detach(), weight_of(attn, "q"), N), k = heads(c, weight_of(attn, "k"), K);
  // r_p = W_{k,R} R_{K-1-p} per head, [H, K, d]: the distances K - 1, ..., 0 (relative.h).
  const Tensor r = permute(reshape(matmul(relative_encodings(K, D), weight_of(attn, "r"), false, true), {K, H, d}),
                           {1, 0, 2});
  // The two score terms of relative.h: (q_i + u)^T k_j and (q_i + v)^T r_p, [B, H, N, K] each.
  const Tensor content = contiguous(matmul(add(q, reshape(u, {H, 1, d})), k, false, true));
  const Tensor position = contiguous(
      matmul(add(q, reshape(w, {H, 1, d})), contiguous(expand(unsqueeze(r, 0), {B, H, K, d})), false, true));
  const float* cp = content.data<float>();
  const float* pp = position.data<float>();
  const double scale = 1.0 / std::sqrt(double(d)), share = 1.0 / double(H * N);
  Tensor usage = Tensor::zeros({B, K});
  float* out = usage.data<float>();
  std::vector<double> row(static_cast<size_t>(K)), sum(static_cast<size_t>(K));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t o = ((b * H + h) * N + i) * K, seen = M + i + 1;  // causal: keys j <= M + i
        double top = -INFINITY, z = 0.0;
        for (int64_t j = 0; j < seen; ++j) {
          // The relative shift: key j is at distance M + i - j, position column j + N - 1 - i.
          row[size_t(j)] = scale * (double(cp[o + j]) + double(pp[o + j + N - 1 - i]));
          top = std::max(top, row[size_t(j)]);
        }
        for (int64_t j = 0; j < seen; ++j) z += (row[size_t(j)] = std::exp(row[size_t(j)] - top));
        for (int64_t j = 0; j < seen; ++j) sum[size_t(j)] += row[size_t(j)] / z;
      }
    for (int64_t j = 0; j < K; ++j) out[b * K + j] = float(sum[size_t(j)] * share);
  }
  return usage;
}

}  // namespace eformer::attention
