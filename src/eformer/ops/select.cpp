#include "eformer/ops/select.h"

#include <algorithm>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/elementwise.h"

namespace eformer {
namespace kernels {

namespace {
int64_t row_grain(int64_t inner) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1)); }
}  // namespace

void masked_fill_forward(const float* x, const bool* mask, float* out, int64_t outer, int64_t inner,
                         const int64_t* row_x, const int64_t* row_mask, int64_t s_x, int64_t s_mask,
                         float value) {
  parallel::parallel_for(outer, row_grain(inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* px = x + row_x[r];
      const bool* pm = mask + row_mask[r];
      float* po = out + r * inner;
      for (int64_t i = 0; i < inner; ++i) po[i] = pm[i * s_mask] ? value : px[i * s_x];
    }
  });
}

void masked_fill_backward(const float* g, const bool* mask, float* dx, int64_t outer, int64_t inner,
                          const int64_t* row_mask, int64_t s_mask) {
  parallel::parallel_for(outer, row_grain(inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const bool* pm = mask + row_mask[r];
      const float* pg = g + r * inner;
      float* pd = dx + r * inner;
      for (int64_t i = 0; i < inner; ++i) pd[i] = pm[i * s_mask] ? 0.0f : pg[i];
    }
  });
}

void where_forward(const bool* cond, const float* a, const float* b, float* out, int64_t outer, int64_t inner,
                   const int64_t* row_cond, const int64_t* row_a, const int64_t* row_b, int64_t s_cond,
                   int64_t s_a, int64_t s_b) {
  parallel::parallel_for(outer, row_grain(inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const bool* pc = cond + row_cond[r];
      const float *pa = a + row_a[r], *pb = b + row_b[r];
      float* po = out + r * inner;
      for (int64_t i = 0; i < inner; ++i) po[i] = pc[i * s_cond] ? pa[i * s_a] : pb[i * s_b];
    }
  });
}

void where_backward(const float* g, const bool* cond, float* da, float* db, int64_t outer, int64_t inner,
                    const int64_t* row_cond, int64_t s_cond) {
  parallel::parallel_for(outer, row_grain(inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const bool* pc = cond + row_cond[r];
      const float* pg = g + r * inner;
      if (da) {
        float* p = da + r * inner;
        for (int64_t i = 0; i < inner; ++i) p[i] = pc[i * s_cond] ? pg[i] : 0.0f;
      }
      if (db) {
        float* p = db + r * inner;
        for (int64_t i = 0; i < inner; ++i) p[i] = pc[i * s_cond] ? 0.0f : pg[i];
      }
    }
  });
}

}  // namespace kernels

namespace {

// How a contiguous operand is read when broadcast to `out_shape`, viewed as [outer, inner] rows
// (inner = the last dim): the start of each row and the step along it.
struct RowReader {
  std::vector<int64_t> rows;
  int64_t step = 0;
};

RowReader row_reader(const Shape& in_shape, const Shape& out_shape) {
  const size_t nd = out_shape.size(), lead = nd - in_shape.size();
  Shape strides(nd, 0), cs = contiguous_strides(in_shape);
  for (size_t i = 0; i < in_shape.size(); ++i) strides[lead + i] = in_shape[i] == 1 ? 0 : cs[i];
  const int64_t inner = nd ? out_shape[nd - 1] : 1;
  const int64_t outer = inner ? numel_of(out_shape) / inner : 0;
  RowReader r;
  r.step = nd ? strides[nd - 1] : 0;
  r.rows.resize(size_t(outer));
  std::vector<int64_t> idx(nd ? nd - 1 : 0, 0);
  for (int64_t o = 0; o < outer; ++o) {
    int64_t off = 0;
    for (size_t d = 0; d + 1 < nd; ++d) off += idx[d] * strides[d];
    r.rows[size_t(o)] = off;
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < out_shape[d]) break;
      idx[d] = 0;
    }
  }
  return r;
}

int64_t inner_of(const Shape& s) { return s.empty() ? 1 : s.back(); }
int64_t outer_of(const Shape& s) { return inner_of(s) ? numel_of(s) / inner_of(s) : 0; }

}  // namespace

Tensor masked_fill(const Tensor& x_in, const Tensor& mask_in, float value) {
  x_in.check_dtype(DType::Float32, "masked_fill: input");
  EF_CHECK(mask_in.dtype() == DType::Bool, ShapeError, "masked_fill: mask has dtype ",
           dtype_name(mask_in.dtype()), "; expected bool");
  const Shape out_shape = broadcast_shapes(x_in.shape(), mask_in.shape(), "masked_fill");
  Tensor x = x_in.contiguous_data(), mask = mask_in.contiguous_data();
  Tensor out = Tensor::empty(out_shape);
  const int64_t outer = outer_of(out_shape), inner = inner_of(out_shape);
  RowReader rx = row_reader(x.shape(), out_shape), rm = row_reader(mask.shape(), out_shape);
  kernels::masked_fill_forward(x.data<float>(), mask.data<bool>(), out.data<float>(), outer, inner,
                               rx.rows.data(), rm.rows.data(), rx.step, rm.step, value);
  return autograd::record(
      "masked_fill", out, {x_in}, [mask, rm, xs = x.shape(), out_shape, outer, inner](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dx = Tensor::empty(out_shape);
        kernels::masked_fill_backward(gc.data<float>(), mask.data<bool>(), dx.data<float>(), outer, inner,
                                      rm.rows.data(), rm.step);
        return std::vector<Tensor>{sum_to(dx, xs)};
      });
}

Tensor where(const Tensor& cond_in, const Tensor& a_in, const Tensor& b_in) {
  EF_CHECK(cond_in.dtype() == DType::Bool, ShapeError, "where: condition has dtype ",
           dtype_name(cond_in.dtype()), "; expected bool");
  a_in.check_dtype(DType::Float32, "where: input");
  b_in.check_dtype(DType::Float32, "where: other");
  const Shape out_shape =
      broadcast_shapes(broadcast_shapes(cond_in.shape(), a_in.shape(), "where"), b_in.shape(), "where");
  Tensor cond = cond_in.contiguous_data(), a = a_in.contiguous_data(), b = b_in.contiguous_data();
  Tensor out = Tensor::empty(out_shape);
  const int64_t outer = outer_of(out_shape), inner = inner_of(out_shape);
  RowReader rc = row_reader(cond.shape(), out_shape), ra = row_reader(a.shape(), out_shape),
            rb = row_reader(b.shape(), out_shape);
  kernels::where_forward(cond.data<bool>(), a.data<float>(), b.data<float>(), out.data<float>(), outer, inner,
                         rc.rows.data(), ra.rows.data(), rb.rows.data(), rc.step, ra.step, rb.step);
  const bool need_a = requires_grad(a_in), need_b = requires_grad(b_in);
  return autograd::record(
      "where", out, {a_in, b_in},
      [cond, rc, as = a.shape(), bs = b.shape(), out_shape, outer, inner, need_a, need_b](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor da = need_a ? Tensor::empty(out_shape) : Tensor();
        Tensor db = need_b ? Tensor::empty(out_shape) : Tensor();
        kernels::where_backward(gc.data<float>(), cond.data<bool>(), need_a ? da.data<float>() : nullptr,
                                need_b ? db.data<float>() : nullptr, outer, inner, rc.rows.data(), rc.step);
        return std::vector<Tensor>{need_a ? sum_to(da, as) : Tensor(), need_b ? sum_to(db, bs) : Tensor()};
      });
}

}  // namespace eformer
