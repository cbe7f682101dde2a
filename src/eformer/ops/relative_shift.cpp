#include "eformer/ops/relative_shift.h"

#include <algorithm>
#include <limits>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {

void relative_shift_forward(const float* x, float* out, int64_t outer, int64_t N, int64_t K) {
  const float masked = -std::numeric_limits<float>::infinity();
  parallel::parallel_for(outer * N, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r % N, visible = K - N + i + 1;  // keys 0 .. K - N + i
      const float* src = x + r * K + (N - 1 - i);
      float* dst = out + r * K;
      std::copy(src, src + visible, dst);
      std::fill(dst + visible, dst + K, masked);
    }
  });
}

void relative_shift_backward(const float* g, float* dx, int64_t outer, int64_t N, int64_t K) {
  parallel::parallel_for(outer * N, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r % N, visible = K - N + i + 1, shift = N - 1 - i;
      float* dst = dx + r * K;
      std::fill(dst, dst + shift, 0.0f);  // distances beyond the first key: no score used them
      std::copy(g + r * K, g + r * K + visible, dst + shift);
    }
  });
}

}  // namespace kernels

Tensor relative_shift(const Tensor& x_in) {
  x_in.check_dtype(DType::Float32, "relative_shift");
  EF_CHECK(x_in.dim() >= 2, ShapeError, "relative_shift: expected [..., N, K], got ", x_in.describe());
  const Shape& s = x_in.shape();
  const int64_t N = s[s.size() - 2], K = s.back();
  EF_CHECK(N <= K, ShapeError, "relative_shift: ", N, " queries but only ", K,
           " keys; the queries are the last N keys, so N <= K");
  const int64_t outer = N * K == 0 ? 0 : x_in.numel() / (N * K);
  Tensor x = x_in.contiguous_data();
  Tensor out = Tensor::empty(s);
  if (out.numel() > 0) kernels::relative_shift_forward(x.data<float>(), out.data<float>(), outer, N, K);
  return autograd::record("relative_shift", out, {x_in}, [s, outer, N, K](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(s);
    if (dx.numel() > 0) kernels::relative_shift_backward(gc.data<float>(), dx.data<float>(), outer, N, K);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace eformer
