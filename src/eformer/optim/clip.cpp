#include "eformer/optim/clip.h"

#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"

namespace eformer::optim {
namespace {

// Sums of squares over fixed blocks (independent of the thread count), added up in order.
constexpr int64_t kBlock = 1 << 15;

double sum_of_squares(const float* x, int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(size_t(blocks), 0.0);
  parallel::parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double s = 0.0;
      for (int64_t i = b * kBlock, end = std::min(n, (b + 1) * kBlock); i < end; ++i)
        s += double(x[i]) * double(x[i]);
      partial[size_t(b)] = s;
    }
  });
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

std::vector<Tensor> grads_of(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    EF_CHECK(params[i].defined(), ValueError, "clip_grad_norm: parameter ", i, " is undefined");
    Tensor g = grad(params[i]);
    if (!g.defined()) continue;
    EF_CHECK(g.dtype() == DType::Float32, ShapeError, "clip_grad_norm: the gradient of parameter ", i, " is ",
             g.describe(), "; expected float32");
    grads.push_back(g);
  }
  return grads;
}

double norm_of(const std::vector<Tensor>& grads) {
  double total = 0.0;
  for (const Tensor& g : grads) {
    Tensor c = g.contiguous_data();
    total += sum_of_squares(c.data<float>(), c.numel());
  }
  return std::sqrt(total);
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) { return norm_of(grads_of(params)); }

float clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  EF_CHECK(max_norm >= 0.0, ValueError, "clip_grad_norm: max_norm is ", max_norm, "; expected >= 0");
  std::vector<Tensor> grads = grads_of(params);
  double total = norm_of(grads);
  double coef = max_norm / (total + 1e-6);
  if (!(coef < 1.0)) return float(total);  // also when total is NaN
  const float scale = float(coef);
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor g = grad(params[i]);
    if (!g.defined()) continue;
    // Scale in place like PyTorch; a strided gradient is replaced by a scaled contiguous copy.
    Tensor target = g.is_contiguous() ? g : g.clone_data();
    float* p = target.data<float>();
    parallel::parallel_for(target.numel(), 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) p[j] *= scale;
    });
    if (!target.is_same(g)) set_grad(params[i], target);
  }
  return float(total);
}

}  // namespace eformer::optim
