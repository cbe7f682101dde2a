#include "eformer/ops/shape.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "eformer/autograd/autograd.h"
#include "eformer/ops/elementwise.h"

namespace eformer {

namespace {
// Calls fn(dst_offset, src_offset) for every element of `shape`, in row-major order.
template <class F>
void for_each_offset(const Shape& shape, const Shape& dst_strides, const Shape& src_strides, F fn) {
  const size_t nd = shape.size();
  const int64_t n = numel_of(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t od = 0, os = 0;
    for (size_t d = 0; d < nd; ++d) od += idx[d] * dst_strides[d], os += idx[d] * src_strides[d];
    fn(od, os);
    for (size_t d = nd; d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}
}  // namespace

AxisSplit split_around(const Shape& shape, int64_t dim) {
  AxisSplit r{1, shape[size_t(dim)], 1};
  for (int64_t i = 0; i < dim; ++i) r.outer *= shape[size_t(i)];
  for (size_t i = size_t(dim) + 1; i < shape.size(); ++i) r.inner *= shape[i];
  return r;
}

void copy_into(const Tensor& dst, const Tensor& src) {
  EF_CHECK(dst.shape() == src.shape(), ShapeError, "copy_into: destination ", dst.describe(), " and source ",
           src.describe(), " differ");
  EF_CHECK(dst.dtype() == src.dtype(), ShapeError, "copy_into: dtypes differ");
  const size_t es = dtype_size(dst.dtype());
  if (dst.is_contiguous() && src.is_contiguous()) {
    std::memmove(dst.raw_data(), src.raw_data(), size_t(dst.numel()) * es);
    return;
  }
  char* pd = static_cast<char*>(dst.raw_data());
  const char* ps = static_cast<const char*>(src.raw_data());
  // The trailing dims that are contiguous in both are copied as one block per outer index.
  const Shape& shape = dst.shape();
  int64_t outer_dims = int64_t(shape.size()), block = 1;
  while (outer_dims > 0) {
    const size_t i = size_t(outer_dims - 1);
    if (shape[i] != 1 && (dst.strides()[i] != block || src.strides()[i] != block)) break;
    block *= shape[i];
    --outer_dims;
  }
  const Shape outer(shape.begin(), shape.begin() + outer_dims);
  const Shape dst_strides(dst.strides().begin(), dst.strides().begin() + outer_dims);
  const Shape src_strides(src.strides().begin(), src.strides().begin() + outer_dims);
  const size_t bytes = size_t(block) * es;
  for_each_offset(outer, dst_strides, src_strides,
                  [&](int64_t od, int64_t os) { std::memcpy(pd + od * int64_t(es), ps + os * int64_t(es), bytes); });
}

Tensor reshape(const Tensor& x, const Shape& shape_in) {
  Shape shape = shape_in;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      EF_CHECK(infer < 0, ShapeError, "reshape: only one dim can be -1 in ", shape_str(shape_in));
      infer = int64_t(i);
    } else {
      EF_CHECK(shape[i] >= 0, ShapeError, "reshape: invalid size ", shape[i], " in ", shape_str(shape_in));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    EF_CHECK(known > 0 && x.numel() % known == 0, ShapeError, "reshape: cannot reshape ", x.describe(), " into ",
             shape_str(shape_in));
    shape[size_t(infer)] = x.numel() / known;
  }
  EF_CHECK(numel_of(shape) == x.numel(), ShapeError, "reshape: cannot reshape ", x.describe(), " (", x.numel(),
           " elements) into ", shape_str(shape_in));
  Tensor c = x.contiguous_data();
  Tensor out = c.as_strided(shape, contiguous_strides(shape), c.offset());
  Shape xs = x.shape();
  return autograd::record("reshape", out, {x}, [xs](const Tensor& g) { return std::vector<Tensor>{reshape(g, xs)}; });
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  int64_t s = normalize_dim(start_dim, x.dim(), "flatten"), e = normalize_dim(end_dim, x.dim(), "flatten");
  EF_CHECK(s <= e, ValueError, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape shape(x.shape().begin(), x.shape().begin() + s);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= x.shape()[size_t(i)];
  shape.push_back(m);
  shape.insert(shape.end(), x.shape().begin() + e + 1, x.shape().end());
  return reshape(x, shape);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  EF_CHECK(int64_t(dims.size()) == x.dim(), ShapeError, "permute: ", dims.size(), " dims given for ", x.describe());
  std::vector<int64_t> p, inverse(dims.size());
  std::vector<bool> used(dims.size(), false);
  for (int64_t d : dims) {
    int64_t n = normalize_dim(d, x.dim(), "permute");
    EF_CHECK(!used[size_t(n)], ValueError, "permute: dim ", d, " is repeated");
    used[size_t(n)] = true;
    p.push_back(n);
  }
  Shape shape, strides;
  for (size_t i = 0; i < p.size(); ++i) {
    shape.push_back(x.shape()[size_t(p[i])]);
    strides.push_back(x.strides()[size_t(p[i])]);
    inverse[size_t(p[i])] = int64_t(i);
  }
  Tensor out = x.as_strided(shape, strides, x.offset());
  return autograd::record("permute", out, {x},
                          [inverse](const Tensor& g) { return std::vector<Tensor>{permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  std::vector<int64_t> dims(size_t(x.dim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[size_t(normalize_dim(dim0, x.dim(), "transpose"))], dims[size_t(normalize_dim(dim1, x.dim(), "transpose"))]);
  return permute(x, dims);
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = x.clone_data();
  return autograd::record("contiguous", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor expand(const Tensor& x, const Shape& shape_in) {
  EF_CHECK(shape_in.size() >= size_t(x.dim()), ShapeError, "expand: cannot expand ", x.describe(), " to ",
           shape_str(shape_in));
  const size_t lead = shape_in.size() - size_t(x.dim());
  Shape shape = shape_in, strides(shape_in.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      EF_CHECK(shape[i] >= 0, ShapeError, "expand: invalid size ", shape[i], " in ", shape_str(shape_in));
      continue;
    }
    int64_t have = x.shape()[i - lead];
    if (shape[i] == -1) shape[i] = have;
    EF_CHECK(have == shape[i] || have == 1, ShapeError, "expand: cannot expand ", x.describe(), " to ",
             shape_str(shape_in), " (dim ", i, ")");
    strides[i] = have == shape[i] ? x.strides()[i - lead] : 0;
  }
  if (shape == x.shape()) return x;
  Tensor out = x.as_strided(shape, strides, x.offset());
  Shape xs = x.shape();
  return autograd::record("expand", out, {x}, [xs](const Tensor& g) { return std::vector<Tensor>{sum_to(g, xs)}; });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim(dim, x.dim() + 1, "unsqueeze");
  Shape s = x.shape();
  s.insert(s.begin() + d, 1);
  return reshape(x, s);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim(dim, x.dim(), "squeeze");
  if (x.shape()[size_t(d)] != 1) return x;
  Shape s = x.shape();
  s.erase(s.begin() + d);
  return reshape(x, s);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const int64_t d = normalize_dim(dim, x.dim(), "slice");
  const int64_t n = x.shape()[size_t(d)];
  EF_CHECK(step >= 1, ValueError, "slice: step ", step, " must be positive");
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), strides = x.strides();
  shape[size_t(d)] = (end - start + step - 1) / step;
  strides[size_t(d)] *= step;
  Tensor out = x.as_strided(shape, strides, x.offset() + start * x.strides()[size_t(d)]);
  Shape xs = x.shape();
  return autograd::record("slice", out, {x}, [xs, d, start, end, step](const Tensor& g) {
    Tensor dx = Tensor::zeros(xs);
    Shape strides = dx.strides();
    Shape shape = xs;
    shape[size_t(d)] = (end - start + step - 1) / step;
    strides[size_t(d)] *= step;
    Tensor region = dx.as_strided(shape, strides, start * dx.strides()[size_t(d)]);
    copy_into(region, g.contiguous_data());
    return std::vector<Tensor>{dx};
  });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const int64_t d = normalize_dim(dim, x.dim(), "narrow");
  EF_CHECK(start >= 0 && length >= 0 && start + length <= x.shape()[size_t(d)], IndexError, "narrow: [", start, ", ",
           start + length, ") is outside dim ", dim, " of ", x.describe());
  return slice(x, d, start, start + length);
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  EF_CHECK(!xs.empty(), ValueError, "cat: no tensors given");
  const int64_t d = normalize_dim(dim, xs[0].dim(), "cat");
  Shape shape = xs[0].shape();
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (const Tensor& t : xs) {
    EF_CHECK(t.dim() == xs[0].dim() && t.dtype() == xs[0].dtype(), ShapeError, "cat: ", t.describe(),
             " does not match ", xs[0].describe());
    for (int64_t i = 0; i < t.dim(); ++i)
      EF_CHECK(i == d || t.shape()[size_t(i)] == shape[size_t(i)], ShapeError, "cat: ", t.describe(),
               " does not match ", xs[0].describe(), " outside dim ", dim);
    sizes.push_back(t.shape()[size_t(d)]);
    total += sizes.back();
  }
  shape[size_t(d)] = total;
  Tensor out = Tensor::empty(shape, xs[0].dtype());
  int64_t at = 0;
  for (const Tensor& t : xs) {
    Shape part = shape;
    part[size_t(d)] = t.shape()[size_t(d)];
    copy_into(out.as_strided(part, out.strides(), at * out.strides()[size_t(d)]), t);
    at += part[size_t(d)];
  }
  return autograd::record("cat", out, xs, [sizes, d](const Tensor& g) {
    std::vector<Tensor> grads;
    int64_t at = 0;
    for (int64_t s : sizes) {
      grads.push_back(slice(g, d, at, at + s).clone_data());
      at += s;
    }
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    EF_CHECK(s >= 0, ValueError, "split: negative size ", s);
    total += s;
  }
  EF_CHECK(total == x.shape()[size_t(d)], ShapeError, "split: sizes sum to ", total, " but dim ", dim, " of ",
           x.describe(), " has ", x.shape()[size_t(d)]);
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(x, d, at, at + s));
    at += s;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim) {
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  EF_CHECK(size >= 1, ValueError, "split: size ", size, " must be positive");
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < x.shape()[size_t(d)]; at += size) sizes.push_back(std::min(size, x.shape()[size_t(d)] - at));
  return split(x, sizes, d);
}

}  // namespace eformer
