#include "eformer/ops/layer_norm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {

void layer_norm_forward(const float* x, const float* weight, const float* bias, float* y, float* mean,
                        float* rstd, int64_t N, int64_t C, float eps) {
  parallel::parallel_for(N, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) {
                             const float* px = x + r * C;
                             float* py = y + r * C;
                             // Two passes (mean, then the variance of the centred row) for accuracy.
                             float s = 0.0f;
#pragma omp simd reduction(+ : s)
                             for (int64_t j = 0; j < C; ++j) s += px[j];
                             const float m = s / float(C);
                             float v = 0.0f;
#pragma omp simd reduction(+ : v)
                             for (int64_t j = 0; j < C; ++j) v += (px[j] - m) * (px[j] - m);
                             const float rs = 1.0f / std::sqrt(v / float(C) + eps);
                             mean[r] = m;
                             rstd[r] = rs;
                             if (weight && bias) {
#pragma omp simd
                               for (int64_t j = 0; j < C; ++j) py[j] = (px[j] - m) * rs * weight[j] + bias[j];
                             } else if (weight) {
#pragma omp simd
                               for (int64_t j = 0; j < C; ++j) py[j] = (px[j] - m) * rs * weight[j];
                             } else if (bias) {
#pragma omp simd
                               for (int64_t j = 0; j < C; ++j) py[j] = (px[j] - m) * rs + bias[j];
                             } else {
#pragma omp simd
                               for (int64_t j = 0; j < C; ++j) py[j] = (px[j] - m) * rs;
                             }
                           }
                         });
}

// With xhat = (x - mean) rstd and dxhat = dy weight:
//   dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat)),  dweight = sum_N dy xhat,  dbias = sum_N dy.
// Rows are grouped into at most kBlocks blocks (a function of N only); each block sums its rows'
// dweight/dbias in row order into its own partial, and the partials are added in block order.
void layer_norm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                         const float* rstd, float* dx, float* dweight, float* dbias, int64_t N, int64_t C) {
  if (N <= 0 || C <= 0) {
    if (dweight) std::memset(dweight, 0, sizeof(float) * size_t(std::max<int64_t>(C, 0)));
    if (dbias) std::memset(dbias, 0, sizeof(float) * size_t(std::max<int64_t>(C, 0)));
    return;
  }
  constexpr int64_t kBlocks = 64;
  const bool partials = dweight || dbias;
  const int64_t blocks = partials ? std::min(N, kBlocks) : N;
  Tensor ones, part_w, part_b;
  if (!weight) {
    ones = Tensor::full({C}, 1.0);
    weight = ones.data<float>();
  }
  if (dweight) part_w = Tensor::zeros({blocks, C});
  if (dbias) part_b = Tensor::zeros({blocks, C});
  float* pw_all = dweight ? part_w.data<float>() : nullptr;
  float* pb_all = dbias ? part_b.data<float>() : nullptr;

  parallel::parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      float* pw = pw_all ? pw_all + b * C : nullptr;
      float* pb = pb_all ? pb_all + b * C : nullptr;
      for (int64_t r = N * b / blocks, r_end = N * (b + 1) / blocks; r < r_end; ++r) {
        const float *px = x + r * C, *pg = dy + r * C;
        const float m = mean[r], rs = rstd[r];
        if (dx) {
          float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
          for (int64_t j = 0; j < C; ++j) {
            const float g = pg[j] * weight[j];
            sum_g += g;
            sum_gx += g * (px[j] - m) * rs;
          }
          const float mean_g = sum_g / float(C), mean_gx = sum_gx / float(C);
          float* pd = dx + r * C;
#pragma omp simd
          for (int64_t j = 0; j < C; ++j)
            pd[j] = rs * (pg[j] * weight[j] - mean_g - (px[j] - m) * rs * mean_gx);
        }
        if (pw) {
#pragma omp simd
          for (int64_t j = 0; j < C; ++j) pw[j] += pg[j] * (px[j] - m) * rs;
        }
        if (pb) {
#pragma omp simd
          for (int64_t j = 0; j < C; ++j) pb[j] += pg[j];
        }
      }
    }
  });
  if (!partials) return;
  parallel::parallel_for(C, 1024, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      if (dweight) dweight[j] = 0.0f;
      if (dbias) dbias[j] = 0.0f;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      if (dweight)
        for (int64_t j = j0; j < j1; ++j) dweight[j] += pw_all[b * C + j];
      if (dbias)
        for (int64_t j = j0; j < j1; ++j) dbias[j] += pb_all[b * C + j];
    }
  });
}

}  // namespace kernels

Tensor layer_norm(const Tensor& x_in, const Shape& normalized_shape, const Tensor& weight_in,
                  const Tensor& bias_in, float eps) {
  x_in.check_dtype(DType::Float32, "layer_norm");
  const int64_t k = int64_t(normalized_shape.size());
  EF_CHECK(k >= 1, ShapeError,
           "layer_norm: normalized_shape is empty; expected the sizes of 1 or more trailing dims");
  EF_CHECK(k <= x_in.dim(), ShapeError, "layer_norm: normalized_shape ", shape_str(normalized_shape), " has ",
           k, " dims but the input ", x_in.describe(), " has only ", x_in.dim());
  const Shape trailing(x_in.shape().end() - k, x_in.shape().end());
  EF_CHECK(trailing == normalized_shape, ShapeError, "layer_norm: normalized_shape ",
           shape_str(normalized_shape), " does not match the trailing dims of the input ", x_in.describe());
  for (const auto& [t, what] : {std::pair{&weight_in, "weight"}, std::pair{&bias_in, "bias"}}) {
    if (!t->defined()) continue;
    t->check_dtype(DType::Float32, "layer_norm");
    EF_CHECK(t->shape() == normalized_shape, ShapeError, "layer_norm: ", what, " has shape ",
             shape_str(t->shape()), "; expected normalized_shape ", shape_str(normalized_shape));
  }
  EF_CHECK(eps >= 0.0f, ValueError, "layer_norm: eps must be >= 0, got ", eps);
  const int64_t C = numel_of(normalized_shape), N = C > 0 ? x_in.numel() / C : 0;

  Tensor x = x_in.contiguous_data();
  Tensor w = weight_in.defined() ? weight_in.contiguous_data() : Tensor();
  Tensor b = bias_in.defined() ? bias_in.contiguous_data() : Tensor();
  Tensor out = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({N}), rstd = Tensor::empty({N});
  if (N > 0 && C > 0)
    kernels::layer_norm_forward(x.data<float>(), w.defined() ? w.data<float>() : nullptr,
                                b.defined() ? b.data<float>() : nullptr, out.data<float>(),
                                mean.data<float>(), rstd.data<float>(), N, C, eps);

  const bool need_x = requires_grad(x_in), need_w = w.defined() && requires_grad(weight_in),
             need_b = b.defined() && requires_grad(bias_in);
  Tensor xd = x.detach(), wd = w.defined() ? w.detach() : Tensor();
  return autograd::record(
      "layer_norm", out, {x_in, weight_in, bias_in},
      [xd, wd, mean, rstd, normalized_shape, N, C, need_x, need_w, need_b](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dx = need_x ? Tensor::empty(xd.shape()) : Tensor();
        Tensor dw = need_w ? Tensor::empty(normalized_shape) : Tensor();
        Tensor db = need_b ? Tensor::empty(normalized_shape) : Tensor();
        kernels::layer_norm_backward(
            gc.data<float>(), xd.data<float>(), wd.defined() ? wd.data<float>() : nullptr, mean.data<float>(),
            rstd.data<float>(), need_x ? dx.data<float>() : nullptr, need_w ? dw.data<float>() : nullptr,
            need_b ? db.data<float>() : nullptr, N, C);
        return std::vector<Tensor>{dx, dw, db};
      });
}

}  // namespace eformer
