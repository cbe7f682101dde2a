#include "eformer/ops/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
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

namespace {

// The number of targets that are not ignore_index; a target outside [0, C) is an IndexError.
int64_t counted_targets(const char* who, const int64_t* t, int64_t N, int64_t C, int64_t ignore_index) {
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) {
    if (t[r] == ignore_index) continue;
    EF_CHECK(t[r] >= 0 && t[r] < C, IndexError, who, ": target ", t[r], " at position ", r,
             " is out of range for ", C, " classes; expected 0 <= target < ", C, " or ignore_index (",
             ignore_index, ")");
    ++count;
  }
  return count;
}

// Per-row losses [N] reduced; the sum is in row order, so independent of the thread count.
Tensor reduce_losses(const Tensor& losses, Reduction reduction, int64_t count) {
  if (reduction == Reduction::None) return losses;
  double total = 0;
  const float* pl = losses.data<float>();
  for (int64_t r = 0; r < losses.numel(); ++r) total += pl[r];
  if (reduction == Reduction::Mean) total = count > 0 ? total / double(count) : std::nan("");
  return Tensor::scalar(float(total));
}

// The upstream gradient of the reduced loss as one gradient per row [N].
Tensor row_gradients(const Tensor& g, Reduction reduction, int64_t count, int64_t N) {
  Tensor gc = g.contiguous_data();
  Tensor dloss = Tensor::empty({N});
  float* pd = dloss.data<float>();
  if (reduction == Reduction::None) {
    std::copy(gc.data<float>(), gc.data<float>() + N, pd);
  } else {
    const float divisor = reduction == Reduction::Mean && count > 0 ? float(count) : 1.0f;
    std::fill(pd, pd + N, gc.item() / divisor);
  }
  return dloss;
}

}  // namespace

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
  const int64_t count = counted_targets("cross_entropy", t, N, C, ignore_index);

  Tensor losses = Tensor::empty({N}), lse = Tensor::empty({N});
  if (C > 0) {
    kernels::cross_entropy_forward(logits.data<float>(), t, losses.data<float>(), lse.data<float>(), N, C,
                                   ignore_index);
  } else {
    std::fill(losses.data<float>(), losses.data<float>() + N, 0.0f);  // every target is then ignored
  }

  Tensor out = reduce_losses(losses, reduction, count);

  Tensor xd = logits.detach(), td = target.detach();
  return autograd::record(
      "cross_entropy", out, {logits_in},
      [xd, td, lse, N, C, ignore_index, reduction, count](const Tensor& g) {
        Tensor dloss = row_gradients(g, reduction, count, N);
        const float* pd = dloss.data<float>();
        Tensor dx = Tensor::empty({N, C});
        if (C > 0)
          kernels::cross_entropy_backward(xd.data<float>(), td.data<int64_t>(), lse.data<float>(), pd,
                                          dx.data<float>(), N, C, ignore_index);
        return std::vector<Tensor>{dx};
      });
}

Tensor linear_cross_entropy(const Tensor& h_in, const Tensor& weight_in, const Tensor& target_in,
                            int64_t ignore_index, Reduction reduction, int64_t chunk_rows) {
  h_in.check_dtype(DType::Float32, "linear_cross_entropy: h");
  weight_in.check_dtype(DType::Float32, "linear_cross_entropy: weight");
  target_in.check_dtype(DType::Int64, "linear_cross_entropy: target");
  EF_CHECK(h_in.dim() == 2 && weight_in.dim() == 2 && h_in.size(1) == weight_in.size(1), ShapeError,
           "linear_cross_entropy: h is ", h_in.describe(), " and weight ", weight_in.describe(),
           "; expected h [N, D] and weight [C, D]");
  const int64_t N = h_in.size(0), D = h_in.size(1), C = weight_in.size(0);
  EF_CHECK(target_in.dim() == 1 && target_in.size(0) == N, ShapeError, "linear_cross_entropy: target is ",
           target_in.describe(), "; expected [", N, "] to match h ", h_in.describe());
  EF_CHECK(chunk_rows >= 0, ValueError, "linear_cross_entropy: chunk_rows = ", chunk_rows,
           "; expected >= 1, or 0 for automatic");
  constexpr int64_t kChunkFloats = (int64_t(16) << 20) / int64_t(sizeof(float));
  const int64_t rows = std::max<int64_t>(1, chunk_rows > 0 ? chunk_rows : kChunkFloats / std::max<int64_t>(C, 1));
  Tensor h = h_in.contiguous_data(), weight = weight_in.contiguous_data(), target = target_in.contiguous_data();
  const int64_t* t = target.data<int64_t>();
  const int64_t count = counted_targets("linear_cross_entropy", t, N, C, ignore_index);

  Tensor losses = Tensor::empty({N}), lse = Tensor::empty({N});
  if (C == 0) std::fill(losses.data<float>(), losses.data<float>() + N, 0.0f);
  if (C > 0 && N > 0) {
    Tensor logits = Tensor::empty({std::min(rows, N), C});
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t n = std::min(rows, N - r0);
      blas::sgemm(false, true, n, C, D, 1.0f, h.data<float>() + r0 * D, D, weight.data<float>(), D, 0.0f,
                  logits.data<float>(), C);
      kernels::cross_entropy_forward(logits.data<float>(), t + r0, losses.data<float>() + r0,
                                     lse.data<float>() + r0, n, C, ignore_index);
    }
  }
  Tensor out = reduce_losses(losses, reduction, count);

  Tensor hd = h.detach(), wd = weight.detach(), td = target.detach();
  return autograd::record(
      "linear_cross_entropy", out, {h_in, weight_in},
      [hd, wd, td, lse, N, D, C, rows, ignore_index, reduction, count](const Tensor& g) {
        Tensor dloss = row_gradients(g, reduction, count, N);
        Tensor dh = Tensor::zeros({N, D}), dw = Tensor::zeros({C, D});
        if (C == 0 || N == 0) return std::vector<Tensor>{dh, dw};
        const float *ph = hd.data<float>(), *pw = wd.data<float>();
        Tensor logits = Tensor::empty({std::min(rows, N), C}), dlogits = Tensor::empty({std::min(rows, N), C});
        for (int64_t r0 = 0; r0 < N; r0 += rows) {
          const int64_t n = std::min(rows, N - r0);
          blas::sgemm(false, true, n, C, D, 1.0f, ph + r0 * D, D, pw, D, 0.0f, logits.data<float>(), C);
          kernels::cross_entropy_backward(logits.data<float>(), td.data<int64_t>() + r0, lse.data<float>() + r0,
                                          dloss.data<float>() + r0, dlogits.data<float>(), n, C, ignore_index);
          blas::sgemm(false, false, n, D, C, 1.0f, dlogits.data<float>(), C, pw, D, 0.0f,
                      dh.data<float>() + r0 * D, D);
          blas::sgemm(true, false, C, D, n, 1.0f, dlogits.data<float>(), C, ph + r0 * D, D, 1.0f, dw.data<float>(),
                      D);
        }
        return std::vector<Tensor>{dh, dw};
      });
}

}  // namespace eformer
