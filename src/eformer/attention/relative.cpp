#include "eformer/attention/relative.h"

#include <cmath>

#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/shape.h"
#include "eformer/ops/softmax.h"

namespace eformer::attention {

Tensor relative_encodings(int64_t K, int64_t D) {
  EF_CHECK(K >= 0 && D > 0 && D % 2 == 0, ValueError, "relative_encodings: K = ", K, ", D = ", D,
           "; expected K >= 0 and an even D > 0");
  Tensor R = Tensor::empty({K, D});
  float* p = R.data<float>();
  const int64_t half = D / 2;
  for (int64_t row = 0; row < K; ++row) {
    const double distance = double(K - 1 - row);
    for (int64_t c = 0; c < half; ++c) {
      const double angle = distance / std::pow(10000.0, double(2 * c) / double(D));
      p[row * D + c] = float(std::sin(angle));
      p[row * D + half + c] = float(std::cos(angle));
    }
  }
  return R;
}

namespace {

// Every block of the N x K pairs, unmasked: the kernel's causal cut is the mask.
std::shared_ptr<const kernels::BlockSparseLayout> relative_layout(int64_t N, int64_t K) {
  const int64_t block = kernels::block_sparse_block();
  return kernels::cached_layouts(detail::concat("relative n=", N, " k=", K, " block=", block), [&] {
    return kernels::LayoutParts{std::make_shared<const kernels::BlockSparseLayout>(
        kernels::build_layout(N, K, block, 1, [](int64_t, int64_t, int64_t) { return true; }))};
  })[0];
}

}  // namespace

Tensor relative_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& r, const Tensor& u,
                          const Tensor& w, float scale, float dropout) {
  EF_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && r.dim() == 3 && u.dim() == 2 && w.dim() == 2,
           ShapeError, "relative_attention: expected q [B, H, N, d], k, v [B, H, K, d], r [H, K, d], u, w [H, d]; got q ",
           q.describe(), ", k ", k.describe(), ", v ", v.describe(), ", r ", r.describe(), ", u ", u.describe(),
           ", w ", w.describe());
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), K = k.size(2);
  EF_CHECK(k.shape() == (Shape{B, H, K, d}) && v.shape() == k.shape() && r.shape() == (Shape{H, K, d}) &&
               u.shape() == (Shape{H, d}) && w.shape() == (Shape{H, d}) && N <= K,
           ShapeError, "relative_attention: inconsistent shapes q ", q.describe(), ", k ", k.describe(), ", v ",
           v.describe(), ", r ", r.describe(), ", u ", u.describe(), ", w ", w.describe(),
           " (the N queries are the last N of the K keys)");
  EF_CHECK(dropout >= 0.0f && dropout < 1.0f, ValueError, "relative_attention: dropout = ", dropout,
           "; expected [0, 1)");
  // (a) + (c) = (q_i + u)^T k_j is the kernel's content score; (b) + (d) = (q_i + w)^T r_{i-j} its
  // position score bias, computed per tile (block_sparse.h, kernels::PositionScores). The biases'
  // gradients are the sums over rows of those of q + u and q + w (autograd of the broadcast adds).
  AttentionOptions opts;
  opts.causal = true, opts.scale = scale, opts.dropout = dropout;
  return block_sparse_attention(add(q, reshape(u, {H, 1, d})), k, v, opts, relative_layout(N, K),
                                PositionScoreBias{add(q, reshape(w, {H, 1, d})), r});
}

RelativeAttention::RelativeAttention(int64_t d_model, int64_t n_heads, float dropout, int64_t layer)
    : Module("RelativeAttention"), d_model_(d_model), n_heads_(n_heads), layer_(layer), dropout_(dropout) {
  EF_CHECK(d_model > 0 && n_heads > 0 && d_model % n_heads == 0 && d_model % 2 == 0, ValueError,
           "layer ", layer, ": relative attention needs d_model divisible by n_heads and even (sinusoidal R); d_model = ",
           d_model, ", n_heads = ", n_heads);
  EF_CHECK(dropout >= 0.0f && dropout < 1.0f, ValueError, "layer ", layer, ": relative attention: dropout = ",
           dropout, "; expected [0, 1)");
  q_ = register_module("q", std::make_shared<nn::Linear>(d_model, d_model, false));
  k_ = register_module("k", std::make_shared<nn::Linear>(d_model, d_model, false));
  v_ = register_module("v", std::make_shared<nn::Linear>(d_model, d_model, false));
  r_ = register_module("r", std::make_shared<nn::Linear>(d_model, d_model, false));
  out_ = register_module("out", std::make_shared<nn::Linear>(d_model, d_model, false));
  const int64_t d = d_model / n_heads;
  u_ = register_parameter("content_bias", nn::normal_init({n_heads, d}, 0.02f));
  w_ = register_parameter("position_bias", nn::normal_init({n_heads, d}, 0.02f));
}

std::string RelativeAttention::describe() const {
  return detail::concat("RelativeAttention(d_model=", d_model_, ", n_heads=", n_heads_, ", dropout=", dropout_, ")");
}

Tensor RelativeAttention::heads(const nn::Linear& proj, const Tensor& x) const {
  const int64_t B = x.size(0), L = x.size(1);
  return permute(reshape(proj.forward(x), {B, L, n_heads_, d_model_ / n_heads_}), {0, 2, 1, 3});
}

Tensor RelativeAttention::forward(const Tensor& x, const Tensor& memory) const {
  EF_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d_model_, ShapeError, where(), "x is ",
           x.defined() ? x.describe() : std::string("undefined"), "; expected [batch, seq, ", d_model_, "]");
  const bool has_memory = memory.defined() && memory.size(1) > 0;
  EF_CHECK(!memory.defined() || (memory.dim() == 3 && memory.size(0) == x.size(0) && memory.size(2) == d_model_),
           ShapeError, where(), "memory is ", memory.defined() ? memory.describe() : std::string(),
           "; expected [", x.size(0), ", M, ", d_model_, "]");
  const int64_t B = x.size(0), N = x.size(1), K = N + (has_memory ? memory.size(1) : 0), d = d_model_ / n_heads_;
  Tensor c = has_memory ? cat({memory, x}, 1) : x;
  Tensor r = permute(reshape(r_->forward(relative_encodings(K, d_model_)), {K, n_heads_, d}), {1, 0, 2});
  Tensor o = relative_attention(heads(*q_, x), heads(*k_, c), heads(*v_, c), contiguous(r), u_, w_,
                                float(1.0 / std::sqrt(double(d))), is_training() ? dropout_ : 0.0f);
  return out_->forward(reshape(permute(o, {0, 2, 1, 3}), {B, N, d_model_}));
}

Tensor RelativeAttention::content_attention(const Tensor& x, const Tensor& memory) const {
  const int64_t B = x.size(0), N = x.size(1), M = memory.size(1), d = d_model_ / n_heads_;
  auto heads_of = [&](const nn::Linear& proj, const Tensor& t, int64_t L) {  // weights stop-gradient
    return permute(reshape(matmul(t, proj.weight().detach(), false, true), {B, L, n_heads_, d}), {0, 2, 1, 3});
  };
  Tensor q = heads_of(*q_, x.detach(), N), k = heads_of(*k_, memory, M), v = heads_of(*v_, memory, M);
  Tensor p = softmax(mul_scalar(matmul(q, k, false, true), float(1.0 / std::sqrt(double(d)))), -1);
  Tensor o = reshape(permute(matmul(p, v), {0, 2, 1, 3}), {B, N, d_model_});
  return matmul(o, out_->weight().detach(), false, true);
}

}  // namespace eformer::attention
