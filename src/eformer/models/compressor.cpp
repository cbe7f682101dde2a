#include "eformer/models/compressor.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "eformer/ops/index.h"
#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

Compressor::Compressor(const std::string& kind, int64_t d_model, int64_t rate)
    : Module("Compressor"), kind_(kind), d_model_(d_model), rate_(rate) {
  EF_CHECK(kind == "max_pool" || kind == "mean_pool" || kind == "conv" || kind == "dilated_conv" ||
               kind == "most_used",
           ValueError, "compression '", kind,
           "' is not implemented; expected max_pool, mean_pool, conv, dilated_conv or most_used");
  EF_CHECK(rate >= 1 && d_model >= 1, ValueError, "compressor: rate = ", rate, ", d_model = ", d_model,
           "; expected >= 1");
  if (kind == "conv" || kind == "dilated_conv")
    conv_ = register_module("conv", std::make_shared<nn::Linear>(rate * d_model, d_model, true));
}

std::string Compressor::describe() const {
  return detail::concat("Compressor(", kind_, ", rate=", rate_, ", d_model=", d_model_, ")");
}

Tensor Compressor::forward(const Tensor& x, const Tensor& usage) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d_model_ && x.size(1) % rate_ == 0, ShapeError, where(),
           "expected [batch, n, ", d_model_, "] with n a multiple of the rate ", rate_, ", got ",
           x.defined() ? x.describe() : std::string("undefined"));
  const int64_t B = x.size(0), m = x.size(1) / rate_;
  if (kind_ == "most_used") return most_used(x, usage);
  if (kind_ == "conv") return conv_->forward(reshape(x, {B, m, rate_ * d_model_}));  // the window, flattened
  if (kind_ == "dilated_conv") {
    // Output t reads x_t, x_{t+m}, ..., x_{t+(c-1)m}: rows [B, c, m, D] -> [B, m, c, D], flattened.
    Tensor taps = permute(reshape(x, {B, rate_, m, d_model_}), {0, 2, 1, 3});
    return conv_->forward(reshape(contiguous(taps), {B, m, rate_ * d_model_}));
  }
  Tensor windows = reshape(x, {B, m, rate_, d_model_});
  if (kind_ == "max_pool") return max(windows, 2).first;
  return mean(windows, {2});
}

Tensor Compressor::most_used(const Tensor& x, const Tensor& usage) const {
  const int64_t B = x.size(0), n = x.size(1), m = n / rate_, D = d_model_;
  EF_CHECK(usage.defined() && usage.dim() == 2 && usage.size(0) == B && usage.size(1) == n, ValueError, where(),
           "most_used needs the usage of each memory, [", B, ", ", n, "]; got ",
           usage.defined() ? usage.describe() : std::string("none"));
  const Tensor u = contiguous(usage);
  const float* up = u.data<float>();
  Tensor index = Tensor::empty({B, m, D}, DType::Int64);
  int64_t* ip = index.data<int64_t>();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t b = 0; b < B; ++b) {
    const float* row = up + b * n;
    std::iota(order.begin(), order.end(), int64_t(0));
    // Most used first; a stable sort leaves equal usages in position order (the older first).
    std::stable_sort(order.begin(), order.end(), [row](int64_t i, int64_t j) { return row[i] > row[j]; });
    std::sort(order.begin(), order.begin() + m);  // the kept, back in position order
    for (int64_t t = 0; t < m; ++t) std::fill_n(ip + (b * m + t) * D, D, order[size_t(t)]);
  }
  return gather(x, 1, index);
}

}  // namespace eformer::models
