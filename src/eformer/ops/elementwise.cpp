#include "eformer/ops/elementwise.h"

#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer {
namespace kernels {

// out[i] = f(a[i * sa], b[i * sb]) over an output of `outer` rows of `inner` elements, where each
// input's row offset comes from its broadcast strides. Shapes: out [outer, inner].
template <class F>
void binary_rows(const float* a, const float* b, float* out, int64_t outer, int64_t inner,
                 const std::vector<int64_t>& row_off_a, const std::vector<int64_t>& row_off_b, int64_t sa,
                 int64_t sb, F f) {
  parallel::parallel_for(outer, std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* pa = a + row_off_a[size_t(r)];
      const float* pb = b + row_off_b[size_t(r)];
      float* po = out + r * inner;
      if (sa == 1 && sb == 1) {
        for (int64_t i = 0; i < inner; ++i) po[i] = f(pa[i], pb[i]);
      } else if (sa == 1 && sb == 0) {
        const float vb = *pb;
        for (int64_t i = 0; i < inner; ++i) po[i] = f(pa[i], vb);
      } else if (sa == 0 && sb == 1) {
        const float va = *pa;
        for (int64_t i = 0; i < inner; ++i) po[i] = f(va, pb[i]);
      } else {
        for (int64_t i = 0; i < inner; ++i) po[i] = f(pa[i * sa], pb[i * sb]);
      }
    }
  });
}

}  // namespace kernels

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    EF_CHECK(da == db || da == 1 || db == 1, ShapeError, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Strides of `t` (contiguous) broadcast to `out_shape`: 0 along broadcast dims.
Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  Shape s(out_shape.size(), 0);
  Shape cs = contiguous_strides(t.shape());
  size_t lead = out_shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) s[lead + i] = t.shape()[i] == 1 ? 0 : cs[i];
  return s;
}

template <class F>
Tensor binary_forward(const Tensor& a_in, const Tensor& b_in, const char* op, F f) {
  a_in.check_dtype(DType::Float32, op);
  b_in.check_dtype(DType::Float32, op);
  Shape out_shape = broadcast_shapes(a_in.shape(), b_in.shape(), op);
  Tensor a = a_in.contiguous_data(), b = b_in.contiguous_data();
  Tensor out = Tensor::empty(out_shape);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t nd = int64_t(out_shape.size());
  const int64_t inner = nd ? out_shape[size_t(nd - 1)] : 1, outer = n / std::max<int64_t>(inner, 1);
  Shape sa = broadcast_strides(a, out_shape), sb = broadcast_strides(b, out_shape);
  std::vector<int64_t> off_a(static_cast<size_t>(outer)), off_b(static_cast<size_t>(outer));
  std::vector<int64_t> idx(size_t(std::max<int64_t>(nd - 1, 0)), 0);
  for (int64_t r = 0; r < outer; ++r) {
    int64_t oa = 0, ob = 0;
    for (int64_t d = 0; d < nd - 1; ++d) oa += idx[size_t(d)] * sa[size_t(d)], ob += idx[size_t(d)] * sb[size_t(d)];
    off_a[size_t(r)] = oa, off_b[size_t(r)] = ob;
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[size_t(d)] < out_shape[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
  kernels::binary_rows(a.data<float>(), b.data<float>(), out.data<float>(), outer, inner, off_a, off_b,
                       nd ? sa[size_t(nd - 1)] : 0, nd ? sb[size_t(nd - 1)] : 0, f);
  return out;
}

template <class F>
Tensor unary_map(const Tensor& x_in, const char* op, F f) {
  x_in.check_dtype(DType::Float32, op);
  Tensor x = x_in.contiguous_data();
  Tensor out = Tensor::empty(x.shape());
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel::parallel_for(x.numel(), 32768, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) po[i] = f(px[i]);
  });
  return out;
}

}  // namespace

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const size_t lead = x.shape().size() - shape.size();
  EF_CHECK(x.shape().size() >= shape.size(), ShapeError, "sum_to: cannot reduce ", shape_str(x.shape()), " to ",
           shape_str(shape));
  std::vector<int64_t> dims;
  for (size_t i = 0; i < x.shape().size(); ++i) {
    if (i < lead) {
      dims.push_back(int64_t(i));
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      dims.push_back(int64_t(i));
    } else {
      EF_CHECK(shape[i - lead] == x.shape()[i], ShapeError, "sum_to: cannot reduce ", shape_str(x.shape()), " to ",
               shape_str(shape));
    }
  }
  return reshape(sum(x, dims, /*keepdim=*/true), shape);
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "add", [](float x, float y) { return x + y; });
  Shape sa = a.shape(), sb = b.shape();
  return autograd::record("add", out, {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "sub", [](float x, float y) { return x - y; });
  Shape sa = a.shape(), sb = b.shape();
  return autograd::record("sub", out, {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "mul", [](float x, float y) { return x * y; });
  Tensor ad = a.detach(), bd = b.detach();
  bool need_a = requires_grad(a), need_b = requires_grad(b);
  return autograd::record("mul", out, {a, b}, [ad, bd, need_a, need_b](const Tensor& g) {
    return std::vector<Tensor>{need_a ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               need_b ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "div", [](float x, float y) { return x / y; });
  Tensor ad = a.detach(), bd = b.detach();
  bool need_a = requires_grad(a), need_b = requires_grad(b);
  return autograd::record("div", out, {a, b}, [ad, bd, need_a, need_b](const Tensor& g) {
    // d(a/b)/db = -a / b^2
    return std::vector<Tensor>{need_a ? sum_to(div(g, bd), ad.shape()) : Tensor(),
                               need_b ? sum_to(neg(div(mul(g, ad), mul(bd, bd))), bd.shape()) : Tensor()};
  });
}

Tensor add_scalar(const Tensor& x, float s) {
  Tensor out = unary_map(x, "add_scalar", [s](float v) { return v + s; });
  return autograd::record("add_scalar", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor mul_scalar(const Tensor& x, float s) {
  Tensor out = unary_map(x, "mul_scalar", [s](float v) { return v * s; });
  return autograd::record("mul_scalar", out, {x},
                          [s](const Tensor& g) { return std::vector<Tensor>{mul_scalar(g, s)}; });
}

Tensor rsub_scalar(const Tensor& x, float s) {
  Tensor out = unary_map(x, "rsub_scalar", [s](float v) { return s - v; });
  return autograd::record("rsub_scalar", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
}

Tensor rdiv_scalar(const Tensor& x, float s) {
  Tensor out = unary_map(x, "rdiv_scalar", [s](float v) { return s / v; });
  Tensor xd = x.detach();
  return autograd::record("rdiv_scalar", out, {x}, [xd, s](const Tensor& g) {
    // d(s/x)/dx = -s / x^2
    return std::vector<Tensor>{mul_scalar(div(g, mul(xd, xd)), -s)};
  });
}

Tensor neg(const Tensor& x) {
  Tensor out = unary_map(x, "neg", [](float v) { return -v; });
  return autograd::record("neg", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
}

Tensor pow_scalar(const Tensor& x, float p) {
  Tensor out = unary_map(x, "pow_scalar", [p](float v) { return std::pow(v, p); });
  Tensor xd = x.detach();
  return autograd::record("pow_scalar", out, {x}, [xd, p](const Tensor& g) {
    return std::vector<Tensor>{mul(g, mul_scalar(pow_scalar(xd, p - 1.f), p))};
  });
}

}  // namespace eformer
