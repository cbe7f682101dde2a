#include "eformer/attention/kernels/head_projection.h"

#include <algorithm>

#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"

namespace eformer::attention {
namespace {

// out [rows, cols] += bias [cols] on every row.
void add_bias(float* out, const float* bias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] += bias[c];
}

// db [cols] (+)= the column sums of g [rows, cols], rows in order.
void sum_rows(const float* g, float* db, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) db[c] += g[r * cols + c];
}

void check_bias(const char* who, const Tensor& bias, int64_t width) {
  if (!bias.defined()) return;
  bias.check_dtype(DType::Float32, who);
  EF_CHECK(bias.dim() == 1 && bias.size(0) == width, ShapeError, who, ": bias is ", bias.describe(),
           "; expected [", width, "]");
}

}  // namespace

Tensor project_to_heads(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, int64_t H) {
  x_in.check_dtype(DType::Float32, "project_to_heads: x");
  w_in.check_dtype(DType::Float32, "project_to_heads: weight");
  EF_CHECK(x_in.dim() == 3 && w_in.dim() == 2 && w_in.size(1) == x_in.size(2) && H >= 1 && w_in.size(0) % H == 0,
           ShapeError, "project_to_heads: x is ", x_in.describe(), ", weight ", w_in.describe(), ", heads ", H,
           "; expected x [B, N, D], weight [H w, D]");
  check_bias("project_to_heads", b_in, w_in.size(0));
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2), w = w_in.size(0) / H;
  Tensor x = x_in.contiguous_data(), W = w_in.contiguous_data(), b = b_in.defined() ? b_in.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({B, H, N, w});
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t h = 0; h < H; ++h) {
      float* o = out.data<float>() + (bi * H + h) * N * w;
      blas::sgemm(false, true, N, w, D, 1.0f, x.data<float>() + bi * N * D, D, W.data<float>() + h * w * D, D, 0.0f,
                  o, w);
      if (b.defined()) add_bias(o, b.data<float>() + h * w, N, w);
    }
  Tensor xd = x.detach(), Wd = W.detach();
  const bool has_bias = b.defined();
  std::vector<Tensor> inputs{x_in, w_in};
  if (has_bias) inputs.push_back(b_in);
  return autograd::record("project_to_heads", out, inputs, [xd, Wd, B, N, D, H, w, has_bias](const Tensor& g_in) {
    Tensor g = g_in.contiguous_data();
    Tensor dx = Tensor::empty({B, N, D}), dW = Tensor::zeros({H * w, D});
    Tensor db = Tensor::zeros({H * w});
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t h = 0; h < H; ++h) {
        const float* gh = g.data<float>() + (bi * H + h) * N * w;
        // dx_b += g_bh W_h; dW_h += g_bhᵀ x_b.
        blas::sgemm(false, false, N, D, w, 1.0f, gh, w, Wd.data<float>() + h * w * D, D, h == 0 ? 0.0f : 1.0f,
                    dx.data<float>() + bi * N * D, D);
        blas::sgemm(true, false, w, D, N, 1.0f, gh, w, xd.data<float>() + bi * N * D, D, 1.0f,
                    dW.data<float>() + h * w * D, D);
        if (has_bias) sum_rows(gh, db.data<float>() + h * w, N, w);
      }
    std::vector<Tensor> grads{dx, dW};
    if (has_bias) grads.push_back(db);
    return grads;
  });
}

Tensor project_from_heads(const Tensor& a_in, const Tensor& w_in, const Tensor& b_in) {
  a_in.check_dtype(DType::Float32, "project_from_heads: heads");
  w_in.check_dtype(DType::Float32, "project_from_heads: weight");
  EF_CHECK(a_in.dim() == 4 && w_in.dim() == 2 && w_in.size(1) == a_in.size(1) * a_in.size(3), ShapeError,
           "project_from_heads: heads is ", a_in.describe(), ", weight ", w_in.describe(),
           "; expected heads [B, H, N, w], weight [D, H w]");
  check_bias("project_from_heads", b_in, w_in.size(0));
  const int64_t B = a_in.size(0), H = a_in.size(1), N = a_in.size(2), w = a_in.size(3), D = w_in.size(0);
  const int64_t HW = H * w;
  Tensor a = a_in.contiguous_data(), W = w_in.contiguous_data(), b = b_in.defined() ? b_in.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({B, N, D});
  for (int64_t bi = 0; bi < B; ++bi) {
    float* o = out.data<float>() + bi * N * D;
    // out_b = Σ_h a_bh W[:, h]ᵀ, W[:, h] the h-th block of w columns ([D, w], row stride H w).
    for (int64_t h = 0; h < H; ++h)
      blas::sgemm(false, true, N, D, w, 1.0f, a.data<float>() + (bi * H + h) * N * w, w, W.data<float>() + h * w, HW,
                  h == 0 ? 0.0f : 1.0f, o, D);
    if (H == 0) std::fill(o, o + N * D, 0.0f);
    if (b.defined()) add_bias(o, b.data<float>(), N, D);
  }
  Tensor ad = a.detach(), Wd = W.detach();
  const bool has_bias = b.defined();
  std::vector<Tensor> inputs{a_in, w_in};
  if (has_bias) inputs.push_back(b_in);
  return autograd::record("project_from_heads", out, inputs, [ad, Wd, B, N, D, H, w, HW, has_bias](const Tensor& g_in) {
    Tensor g = g_in.contiguous_data();
    Tensor da = Tensor::empty({B, H, N, w}), dW = Tensor::zeros({D, HW});
    Tensor db = Tensor::zeros({D});
    for (int64_t bi = 0; bi < B; ++bi) {
      const float* gb = g.data<float>() + bi * N * D;
      for (int64_t h = 0; h < H; ++h) {
        // da_bh = g_b W[:, h]; dW[:, h] += g_bᵀ a_bh.
        blas::sgemm(false, false, N, w, D, 1.0f, gb, D, Wd.data<float>() + h * w, HW, 0.0f,
                    da.data<float>() + (bi * H + h) * N * w, w);
        blas::sgemm(true, false, D, w, N, 1.0f, gb, D, ad.data<float>() + (bi * H + h) * N * w, w, 1.0f,
                    dW.data<float>() + h * w, HW);
      }
      if (has_bias) sum_rows(gb, db.data<float>(), N, D);
    }
    std::vector<Tensor> grads{da, dW};
    if (has_bias) grads.push_back(db);
    return grads;
  });
}

}  // namespace eformer::attention
