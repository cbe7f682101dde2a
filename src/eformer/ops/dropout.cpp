#include "eformer/ops/dropout.h"

#include <algorithm>
#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"

namespace eformer {
namespace kernels {
namespace {

// out[i] = keep(i) ? in[i] * scale : 0. Element i uses word i % 4 of Philox block counter + i / 4;
// rng::fill_uniform maps a word w to (w >> 8) / 2^24, so "uniform >= p" is "(w >> 8) >= ceil(p 2^24)".
void apply_mask(const float* in, float* out, int64_t n, float p, uint64_t seed, uint64_t stream,
                uint64_t counter) {
  const uint32_t threshold = uint32_t(std::ceil(double(p) * 16777216.0));
  const float scale = 1.0f / (1.0f - p);
  parallel::parallel_for((n + 3) / 4, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const auto w = rng::philox(seed, stream, counter + uint64_t(b));
      for (int64_t j = 0; j < 4 && 4 * b + j < n; ++j) {
        const int64_t i = 4 * b + j;
        out[i] = (w[size_t(j)] >> 8) >= threshold ? in[i] * scale : 0.0f;
      }
    }
  });
}

}  // namespace

void dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t seed, uint64_t stream,
                     uint64_t counter) {
  apply_mask(x, y, n, p, seed, stream, counter);
}

void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed, uint64_t stream,
                      uint64_t counter) {
  apply_mask(dy, dx, n, p, seed, stream, counter);
}

}  // namespace kernels

Tensor dropout(const Tensor& x_in, float p, bool training) {
  x_in.check_dtype(DType::Float32, "dropout");
  EF_CHECK(p >= 0.0f && p < 1.0f, ValueError, "dropout: p = ", p, " is outside [0, 1)");
  if (!training || p == 0.0f) return x_in;
  Tensor x = x_in.contiguous_data();
  const int64_t n = x.numel();
  rng::Generator& gen = rng::default_generator();
  const uint64_t counter = gen.reserve(uint64_t(n + 3) / 4);
  const uint64_t seed = gen.state().seed, stream = gen.state().stream;
  Tensor out = Tensor::empty(x.shape());
  kernels::dropout_forward(x.data<float>(), out.data<float>(), n, p, seed, stream, counter);
  Shape shape = x.shape();
  return autograd::record("dropout", out, {x_in}, [shape, n, p, seed, stream, counter](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dx = Tensor::empty(shape);
    kernels::dropout_backward(gc.data<float>(), dx.data<float>(), n, p, seed, stream, counter);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace eformer
