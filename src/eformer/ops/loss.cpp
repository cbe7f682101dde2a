#include "eformer/ops/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer {
namespace kernels {

void cross_entropy_forward(const float* logits, const int64_t* target, float* loss, float* lse, int64_t N,
                           int64_t C, int64_t ignore_index) {
  parallel::parallel_for(N, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) {
                             const float* px = logits + r * C;
                             float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
                             for (int64_t c = 0; c < C; ++c) m = std::max(m, px[c]);
                             float s = 0.0f;
#pragma omp simd reduction(+ : s)
                             for (int64_t c = 0; c < C; ++c) s += fast_exp(px[c] - m);
                             lse[r] = m + std::log(s);
                             loss[r] = target[r] == ignore_index ? 0.0f : lse[r] - px[target[r]];
                           }
                         });
}

void cross_entropy_backward(const float* logits, const int64_t* target, const float* lse, const float* dloss,
                            float* dlogits, int64_t N, int64_t C, int64_t ignore_index) {
  parallel::parallel_for(N, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) {
                             const float* px = logits + r * C;
                             float* pd = dlogits + r * C;
                             if (target[r] == ignore_index) {
                               std::fill(pd, pd + C, 0.0f);
                               continue;
                             }
                             const float g = dloss[r], shift = lse[r];
                             const int64_t cols = C;
#pragma omp simd
                             for (int64_t c = 0; c < cols; ++c) pd[c] = g * fast_exp(px[c] - shift);
                             pd[target[r]] -= g;
                           }
                         });
}

}  // namespace kernels

Reduction parse_reduction(const std::string& name) {
  if (name == "none") return Reduction::None;
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  throw ValueError("reduction: unknown value '" + name + "'; expected one of 'none', 'mean', 'sum'");
}

Tensor cross_entropy(const Tensor& logits_in, const Tensor& target_in, int64_t ignore_index,
                     Reduction reduction) {
  logits_in.check_dtype(DType::Float32, "cross_entropy: input");
  target_in.check_dtype(DType::Int64, "cross_entropy: target");
  EF_CHECK(logits_in.dim() == 2, ShapeError, "cross_entropy: input is ", logits_in.describe(),
           "; expected 2 dims [N, C]");
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  EF_CHECK(target_in.dim() == 1 && target_in.size(0) == N, ShapeError, "cross_entropy: target is ",
           target_in.describe(), "; expected [", N, "] to match the input ", logits_in.describe());
  Tensor logits = logits_in.contiguous_data(), target = target_in.contiguous_data();
  const int64_t* t = target.data<int64_t>();
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) {
    if (t[r] == ignore_index) continue;
    EF_CHECK(t[r] >= 0 && t[r] < C, IndexError, "cross_entropy: target ", t[r], " at position ", r,
             " is out of range for ", C, " classes; expected 0 <= target < ", C, " or ignore_index (",
             ignore_index, ")");
    ++count;
  }

  Tensor losses = Tensor::empty({N}), lse = Tensor::empty({N});
  if (C > 0) {
    kernels::cross_entropy_forward(logits.data<float>(), t, losses.data<float>(), lse.data<float>(), N, C,
                                   ignore_index);
  } else {
    std::fill(losses.data<float>(), losses.data<float>() + N, 0.0f);  // every target is then ignored
  }

  Tensor out;
  if (reduction == Reduction::None) {
    out = losses;
  } else {
    double total = 0;  // in row order, so independent of the thread count
    const float* pl = losses.data<float>();
    for (int64_t r = 0; r < N; ++r) total += pl[r];
    if (reduction == Reduction::Mean) total = count > 0 ? total / double(count) : std::nan("");
    out = Tensor::scalar(float(total));
  }

  Tensor xd = logits.detach(), td = target.detach();
  return autograd::record(
      "cross_entropy", out, {logits_in},
      [xd, td, lse, N, C, ignore_index, reduction, count](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dloss = Tensor::empty({N});
        float* pd = dloss.data<float>();
        if (reduction == Reduction::None) {
          std::copy(gc.data<float>(), gc.data<float>() + N, pd);
        } else {
          const float divisor = reduction == Reduction::Mean && count > 0 ? float(count) : 1.0f;
          std::fill(pd, pd + N, gc.item() / divisor);
        }
        Tensor dx = Tensor::empty({N, C});
        if (C > 0)
          kernels::cross_entropy_backward(xd.data<float>(), td.data<int64_t>(), lse.data<float>(), pd,
                                          dx.data<float>(), N, C, ignore_index);
        return std::vector<Tensor>{dx};
      });
}

}  // namespace eformer
