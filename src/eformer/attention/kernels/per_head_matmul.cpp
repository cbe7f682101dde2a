#include "eformer/attention/kernels/per_head_matmul.h"

#include "eformer/ops/matmul.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {

Tensor per_head_right(const Tensor& x, const Tensor& w) {
  const int64_t B = x.size(0), H = x.size(1), R = x.size(2), C = x.size(3), O = w.size(2);
  if (w.size(0) == 1) return matmul(x, reshape(w, {C, O}));
  const Tensor rows = reshape(permute(x, {1, 0, 2, 3}), {H, B * R, C});
  return permute(reshape(bmm(rows, w), {H, B, R, O}), {1, 0, 2, 3});
}

Tensor per_head_left(const Tensor& a, const Tensor& x) {
  const int64_t B = x.size(0), H = x.size(1), R = x.size(2), C = x.size(3), K = a.size(1);
  if (a.size(0) == 1) return matmul(reshape(a, {K, R}), x);
  const Tensor cols = reshape(permute(x, {1, 2, 0, 3}), {H, R, B * C});
  return permute(reshape(bmm(a, cols), {H, K, B, C}), {2, 0, 1, 3});
}

}  // namespace eformer::attention
