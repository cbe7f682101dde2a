#include "eformer/ops/matmul.h"

#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/signals.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/shape.h"

namespace eformer {
namespace {

// How a tensor's last two dims reach GEMM: base pointer, leading dimension, whether the
// memory is the transpose of the logical matrix, and the stride between batch matrices.
struct GemmOperand {
  Tensor keep;  // holds the storage (a copy when the view had to be made contiguous)
  const float* data;
  int64_t ld;
  bool transposed;
  int64_t batch_stride;
  int64_t batch;
};

GemmOperand as_gemm_operand(const Tensor& t) {
  const int64_t nd = t.dim();
  const int64_t rows = t.shape()[size_t(nd - 2)], cols = t.shape()[size_t(nd - 1)];
  const int64_t rs = t.strides()[size_t(nd - 2)], cs = t.strides()[size_t(nd - 1)];
  int64_t batch = 1;
  for (int64_t i = 0; i < nd - 2; ++i) batch *= t.shape()[size_t(i)];
  // Batch dims must collapse to one stride.
  bool batch_ok = true;
  int64_t batch_stride = 0;
  for (int64_t i = nd - 3; i >= 0; --i) {
    const int64_t s = t.shape()[size_t(i)], st = t.strides()[size_t(i)];
    if (s == 1) continue;
    if (batch_stride == 0) {
      batch_stride = st;
    } else {
      int64_t inner = 1;
      for (int64_t j = i + 1; j <= nd - 3; ++j) inner *= t.shape()[size_t(j)];
      batch_ok = batch_ok && st == batch_stride * inner;
    }
  }
  if (batch_ok) {
    if ((cs == 1 || cols == 1) && rs >= std::max<int64_t>(cols, 1))
      return {t, t.data<float>(), rs, false, batch_stride, batch};
    if ((rs == 1 || rows == 1) && cs >= std::max<int64_t>(rows, 1))
      return {t, t.data<float>(), cs, true, batch_stride, batch};
  }
  Tensor c = t.clone_data();
  return {c, c.data<float>(), std::max<int64_t>(cols, 1), false, rows * cols, batch};
}

Tensor matmul_forward(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const char* op) {
  a.check_dtype(DType::Float32, op);
  b.check_dtype(DType::Float32, op);
  EF_CHECK(a.dim() >= 2 && b.dim() >= 2, ShapeError, op, ": operands need at least 2 dims, got ", a.describe(),
           " and ", b.describe());
  const int64_t na = a.dim(), nb = b.dim();
  const int64_t M = a.shape()[size_t(trans_a ? na - 1 : na - 2)], Ka = a.shape()[size_t(trans_a ? na - 2 : na - 1)];
  const int64_t Kb = b.shape()[size_t(trans_b ? nb - 1 : nb - 2)], N = b.shape()[size_t(trans_b ? nb - 2 : nb - 1)];
  EF_CHECK(Ka == Kb, ShapeError, op, ": inner sizes differ: ", a.describe(), (trans_a ? " (transposed)" : ""),
           " and ", b.describe(), (trans_b ? " (transposed)" : ""));
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  EF_CHECK(batch_a == batch_b || batch_a.empty() || batch_b.empty(), ShapeError, op, ": batch dims differ: ",
           a.describe(), " and ", b.describe());
  Shape out_shape = batch_a.empty() ? batch_b : batch_a;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape);
  if (out.numel() == 0) return out;
  GemmOperand A = as_gemm_operand(a), B = as_gemm_operand(b);
  const bool ta = trans_a != A.transposed, tb = trans_b != B.transposed;
  float* C = out.data<float>();
  // A shared 2-D b and a row-major a: one GEMM over all batch rows.
  if (batch_b.empty() && !ta && A.batch > 1 && A.batch_stride == M * A.ld) {
    blas::sgemm(false, tb, A.batch * M, N, Ka, 1.f, A.data, A.ld, B.data, B.ld, 0.f, C, N);
    return out;
  }
  const int64_t batch = std::max(A.batch, B.batch);
  signals::DeferSignals defer;  // one mask change for all the GEMMs below (core/signals.h)
  for (int64_t i = 0; i < batch; ++i) {
    const float* pa = A.data + (A.batch > 1 ? i * A.batch_stride : 0);
    const float* pb = B.data + (B.batch > 1 ? i * B.batch_stride : 0);
    blas::sgemm(ta, tb, M, N, Ka, 1.f, pa, A.ld, pb, B.ld, 0.f, C + i * M * N, N);
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = matmul_forward(a, b, trans_a, trans_b, "matmul");
  Tensor ad = a.detach(), bd = b.detach();
  const bool need_a = requires_grad(a), need_b = requires_grad(b);
  return autograd::record("matmul", out, {a, b}, [=](const Tensor& g) {
    // C = op(A) op(B): d op(A) = dC op(B)^T, d op(B) = op(A)^T dC; undo op() for the inputs.
    Tensor da, db;
    if (need_a) {
      da = trans_a ? matmul(bd, g, trans_b, true) : matmul(g, bd, false, !trans_b);
      da = sum_to(da, ad.shape());
    }
    if (need_b) {
      if (bd.dim() == 2 && ad.dim() > 2 && !trans_a) {
        // Shared weights: fold the batch into rows instead of summing per-batch products.
        Tensor a2 = reshape(ad, {-1, ad.shape().back()}), g2 = reshape(g, {-1, g.shape().back()});
        db = trans_b ? matmul(g2, a2, true, false) : matmul(a2, g2, true, false);
      } else {
        db = trans_b ? matmul(g, ad, true, trans_a) : matmul(ad, g, !trans_a, false);
        db = sum_to(db, bd.shape());
      }
    }
    return std::vector<Tensor>{da, db};
  });
}

Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  EF_CHECK(a.dim() == 3 && b.dim() == 3, ShapeError, "bmm: expected 3-D operands, got ", a.describe(), " and ",
           b.describe());
  EF_CHECK(a.shape()[0] == b.shape()[0], ShapeError, "bmm: batch sizes differ: ", a.describe(), " and ", b.describe());
  return matmul(a, b, trans_a, trans_b);
}

}  // namespace eformer
