#include "eformer/nn/positional.h"

#include <algorithm>
#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/nn/linear.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/embedding.h"
#include "eformer/ops/shape.h"

namespace eformer::nn {
namespace kernels {
namespace {

// Rotates each (i, i + d/2) pair of every row by the row's angles; sign -1 rotates backwards.
void rotate(const float* in, float* out, const float* cos, const float* sin, int64_t outer, int64_t N,
            int64_t d, float sign) {
  const int64_t half = d / 2;
  parallel::parallel_for(outer * N, std::max<int64_t>(1, 8192 / d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % N;
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      const float* x1 = in + r * d;
      const float* x2 = x1 + half;
      float* y1 = out + r * d;
      float* y2 = y1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float si = sign * s[i];
        const float a = x1[i], b = x2[i];
        y1[i] = a * c[i] - b * si;
        y2[i] = b * c[i] + a * si;
      }
    }
  });
}

}  // namespace

void rotary_table(float* cos, float* sin, int64_t N, int64_t d, int64_t offset, double base) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(base, -2.0 * double(i) / double(d));
    for (int64_t t = 0; t < N; ++t) {
      const double theta = double(offset + t) * inv_freq;
      cos[t * half + i] = float(std::cos(theta));
      sin[t * half + i] = float(std::sin(theta));
    }
  }
}

void rotary_forward(const float* x, float* y, const float* cos, const float* sin, int64_t outer, int64_t N,
                    int64_t d) {
  rotate(x, y, cos, sin, outer, N, d, 1.0f);
}

void rotary_backward(const float* dy, float* dx, const float* cos, const float* sin, int64_t outer, int64_t N,
                     int64_t d) {
  rotate(dy, dx, cos, sin, outer, N, d, -1.0f);
}

}  // namespace kernels

Tensor sinusoidal_positions(int64_t n, int64_t d) {
  EF_CHECK(n >= 0 && d > 0, ValueError, "sinusoidal_positions: n = ", n, " and d = ", d,
           "; expected n >= 0 and d > 0");
  Tensor pe = Tensor::empty({n, d});
  float* p = pe.data<float>();
  for (int64_t j = 0; j < d; j += 2) {
    const double inv_freq = std::pow(10000.0, -double(j) / double(d));  // j = 2i
    for (int64_t pos = 0; pos < n; ++pos) {
      const double angle = double(pos) * inv_freq;
      p[pos * d + j] = float(std::sin(angle));
      if (j + 1 < d) p[pos * d + j + 1] = float(std::cos(angle));
    }
  }
  return pe;
}

Tensor apply_rotary(const Tensor& x_in, int64_t position_offset, float base) {
  x_in.check_dtype(DType::Float32, "apply_rotary");
  EF_CHECK(x_in.dim() >= 2, ShapeError, "apply_rotary: x is ", x_in.describe(),
           "; expected [..., N, d] (e.g. [B, H, N, d])");
  const int64_t N = x_in.size(-2), d = x_in.size(-1);
  EF_CHECK(d > 0 && d % 2 == 0, ShapeError, "apply_rotary: the head dim d = ", d, " of ", x_in.describe(),
           " is odd or zero; expected an even d (features pair up)");
  EF_CHECK(position_offset >= 0, ValueError, "apply_rotary: position_offset = ", position_offset,
           "; expected >= 0");
  EF_CHECK(std::isfinite(base) && base > 0.0f, ValueError, "apply_rotary: base = ", base, "; expected > 0");
  const int64_t outer = N > 0 ? x_in.numel() / (N * d) : 0;
  Tensor x = x_in.contiguous_data();
  Tensor cos = Tensor::empty({N, d / 2}), sin = Tensor::empty({N, d / 2});
  kernels::rotary_table(cos.data<float>(), sin.data<float>(), N, d, position_offset, double(base));
  Tensor out = Tensor::empty(x.shape());
  kernels::rotary_forward(x.data<float>(), out.data<float>(), cos.data<float>(), sin.data<float>(), outer, N,
                          d);
  Shape shape = x.shape();
  return autograd::record("apply_rotary", out, {x_in}, [shape, cos, sin, outer, N, d](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(shape);
    kernels::rotary_backward(gc.data<float>(), dx.data<float>(), cos.data<float>(), sin.data<float>(), outer,
                             N, d);
    return std::vector<Tensor>{dx};
  });
}

LearnedPositions::LearnedPositions(int64_t max_len, int64_t d)
    : Module("LearnedPositions"), max_len_(max_len), d_(d) {
  EF_CHECK(max_len_ > 0 && d_ > 0, ValueError, "LearnedPositions: max_len = ", max_len_, " and d = ", d_,
           "; expected both > 0");
  weight_ = register_parameter("weight", normal_init({max_len_, d_}));
}

std::string LearnedPositions::describe() const {
  return detail::concat("LearnedPositions(max_len=", max_len_, ", d=", d_, ")");
}

Tensor LearnedPositions::positions(int64_t n, int64_t position_offset) const {
  EF_CHECK(n >= 0 && position_offset >= 0 && position_offset + n <= max_len_, IndexError, where(),
           "positions [", position_offset, ", ", position_offset + n,
           ") are outside the table; expected 0 <= ", "offset and offset + n <= max_len = ", max_len_);
  return slice(weight_, 0, position_offset, position_offset + n);
}

Tensor LearnedPositions::forward(const Tensor& x, int64_t position_offset) const {
  EF_CHECK(x.dim() >= 2 && x.size(-1) == d_, ShapeError, where(), "input ", x.describe(),
           " must be [..., N, d] with d = ", d_);
  return add(x, positions(x.size(-2), position_offset));
}

AxialPositions::AxialPositions(std::array<int64_t, 2> shape, std::array<int64_t, 2> dims)
    : Module("AxialPositions"), shape_(shape), dims_(dims) {
  EF_CHECK(shape_[0] > 0 && shape_[1] > 0 && dims_[0] > 0 && dims_[1] > 0, ValueError,
           "AxialPositions: shape = [", shape_[0], ", ", shape_[1], "] and dims = [", dims_[0], ", ", dims_[1],
           "]; expected all > 0");
  rows_ = register_parameter("rows", normal_init({shape_[0], dims_[0]}));
  cols_ = register_parameter("cols", normal_init({shape_[1], dims_[1]}));
}

std::string AxialPositions::describe() const {
  return detail::concat("AxialPositions(shape=[", shape_[0], ", ", shape_[1], "], dims=[", dims_[0], ", ",
                        dims_[1], "])");
}

Tensor AxialPositions::positions(int64_t n, int64_t position_offset) const {
  EF_CHECK(n >= 0 && position_offset >= 0 && position_offset + n <= capacity(), IndexError, where(),
           "positions [", position_offset, ", ", position_offset + n, ") are outside the ", shape_[0], " x ",
           shape_[1], " grid; expected offset + n <= ", capacity());
  Tensor row_ids = Tensor::empty({n}, DType::Int64), col_ids = Tensor::empty({n}, DType::Int64);
  int64_t *r = row_ids.data<int64_t>(), *c = col_ids.data<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    r[t] = (position_offset + t) / shape_[1];
    c[t] = (position_offset + t) % shape_[1];
  }
  return cat({embedding(row_ids, rows_), embedding(col_ids, cols_)}, -1);
}

Tensor AxialPositions::forward(const Tensor& x, int64_t position_offset) const {
  EF_CHECK(x.dim() >= 2 && x.size(-1) == dim(), ShapeError, where(), "input ", x.describe(),
           " must be [..., N, d] with d = ", dim());
  return add(x, positions(x.size(-2), position_offset));
}

}  // namespace eformer::nn
