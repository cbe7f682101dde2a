#include "eformer/attention/options.h"

#include <cmath>

namespace eformer::attention {

AttentionDims validate_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttentionOptions& opts) {
  EF_CHECK(q.defined() && k.defined() && v.defined(), ValueError, op, ": q, k and v must be defined tensors");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"q", q}, {"k", k}, {"v", v}}) {
    EF_CHECK(t.dtype() == DType::Float32, ShapeError, op, ": ", name, " has dtype ", dtype_name(t.dtype()),
             "; expected float32");
    EF_CHECK(t.dim() == 4, ShapeError, op, ": ", name, " is ", t.describe(),
             "; expected 4 dims [batch, heads, seq, head_dim]");
  }
  AttentionDims s;
  s.B = q.size(0), s.H = q.size(1), s.N = q.size(2), s.d = q.size(3), s.M = k.size(2);
  EF_CHECK(k.size(0) == s.B && k.size(1) == s.H && k.size(3) == s.d, ShapeError, op, ": k is ", k.describe(),
           " but q is ", q.describe(), "; expected k [", s.B, ", ", s.H, ", M, ", s.d, "]");
  EF_CHECK(v.shape() == k.shape(), ShapeError, op, ": v is ", v.describe(), " but k is ", k.describe(),
           "; expected v to have the shape of k");
  EF_CHECK(s.d > 0, ShapeError, op, ": head_dim is 0 in q ", q.describe(), "; expected at least 1");
  if (opts.key_mask.defined()) {
    const Tensor& km = opts.key_mask;
    EF_CHECK(km.dtype() == DType::Bool, ShapeError, op, ": key_mask has dtype ", dtype_name(km.dtype()),
             "; expected bool (true = a real token that may be attended)");
    EF_CHECK(km.dim() == 2 && km.size(0) == s.B && km.size(1) == s.M, ShapeError, op, ": key_mask is ",
             km.describe(), "; expected [batch, keys] = [", s.B, ", ", s.M, "]");
  }
  EF_CHECK(std::isfinite(opts.scale), ValueError, op, ": scale = ", opts.scale,
           "; expected a finite value (or 0 for 1/sqrt(head_dim))");
  EF_CHECK(opts.dropout >= 0.0f && opts.dropout < 1.0f, ValueError, op, ": dropout = ", opts.dropout,
           "; expected a probability in [0, 1)");
  s.scale = opts.scale == 0.0f ? 1.0f / std::sqrt(float(s.d)) : opts.scale;
  return s;
}

}  // namespace eformer::attention
