#include "eformer/core/tensor.h"

#include <cstring>
#include <sstream>

#include "eformer/core/allocator.h"

namespace eformer {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
    case DType::BFloat16: return 2;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::BFloat16: return "bfloat16";
  }
  return "?";
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t product = 0;
  EF_CHECK(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &product) && product <= kMaxNumel, ValueError, what,
           ": ", a, " * ", b, " is negative or more than the limit of 2^48 elements");
  return product;
}

int64_t numel_of(const Shape& shape) {
  bool has_zero = false;
  for (int64_t s : shape) {
    EF_CHECK(s >= 0, ValueError, "shape ", shape_str(shape), " has a negative size");
    has_zero |= s == 0;
  }
  if (has_zero) return 0;  // [2^62, 2^62, 0] holds nothing
  int64_t n = 1;
  for (int64_t s : shape)
    EF_CHECK(!__builtin_mul_overflow(n, s, &n) && n <= kMaxNumel, ValueError, "shape ", shape_str(shape),
             " has more than the limit of 2^48 elements");
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  EF_CHECK(d >= 0 && d < ndim, IndexError, op, ": dim ", dim, " is out of range for a tensor with ", ndim,
           " dims");
  return d;
}

Storage::Storage(size_t bytes) : data_(allocator::allocate(bytes)), bytes_(bytes) {}
Storage::~Storage() { allocator::deallocate(data_, bytes_); }

Tensor::Impl& Tensor::impl() const {
  EF_CHECK(impl_ != nullptr, ValueError, "use of an undefined (empty) Tensor");
  return *impl_;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t s : shape)
    EF_CHECK(s >= 0, ShapeError, "Tensor::empty: negative size in shape ", shape_str(shape));
  const int64_t n = numel_of(shape);
  Tensor t;
  t.impl_ = std::make_shared<Impl>();
  t.impl_->storage = std::make_shared<Storage>(size_t(n) * dtype_size(dtype));
  t.impl_->shape = shape;
  t.impl_->strides = contiguous_strides(shape);
  t.impl_->dtype = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw_data(), 0, size_t(t.numel()) * dtype_size(dtype));
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t = empty(shape, dtype);
  int64_t n = t.numel();
  switch (dtype) {
    case DType::Float32: std::fill_n(t.data<float>(), n, float(value)); break;
    case DType::Int64: std::fill_n(t.data<int64_t>(), n, int64_t(value)); break;
    case DType::Bool: std::fill_n(t.data<bool>(), n, value != 0); break;
    default: throw ValueError(detail::concat("Tensor::full: dtype ", dtype_name(dtype), " is not supported"));
  }
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  EF_CHECK(int64_t(values.size()) == numel_of(shape), ShapeError, "Tensor::from_vector: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

Tensor Tensor::from_vector(const std::vector<int64_t>& values, const Shape& shape) {
  EF_CHECK(int64_t(values.size()) == numel_of(shape), ShapeError, "Tensor::from_vector: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::Int64);
  std::copy(values.begin(), values.end(), t.data<int64_t>());
  return t;
}

int64_t Tensor::size(int64_t d) const { return shape()[size_t(normalize_dim(d, dim(), "Tensor::size"))]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data()) + impl().offset * int64_t(dtype_size(impl().dtype));
}

void Tensor::check_dtype(DType expected, const char* what) const {
  EF_CHECK(dtype() == expected, ShapeError, what, ": expected a ", dtype_name(expected), " tensor, got ",
           dtype_name(dtype()));
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  EF_CHECK(shape.size() == strides.size(), ShapeError, "as_strided: shape ", shape_str(shape), " and strides ",
           shape_str(strides), " differ in length");
  Tensor t;
  t.impl_ = std::make_shared<Impl>();
  t.impl_->storage = impl().storage;
  t.impl_->shape = shape;
  t.impl_->strides = strides;
  t.impl_->offset = offset;
  t.impl_->dtype = impl().dtype;
  return t;
}

Tensor Tensor::detach() const { return as_strided(shape(), strides(), offset()); }

namespace {
// Copies a strided view element by element (innermost dim in a tight loop).
template <class T>
void copy_strided(const T* src, const Shape& shape, const Shape& strides, T* dst) {
  const int64_t nd = int64_t(shape.size());
  const int64_t n = numel_of(shape);
  if (n == 0) return;
  if (nd == 0) {
    dst[0] = src[0];
    return;
  }
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  std::vector<int64_t> idx(size_t(nd), 0);
  for (int64_t o = 0; o < n; o += inner) {
    int64_t off = 0;
    for (int64_t d = 0; d < nd - 1; ++d) off += idx[d] * strides[d];
    for (int64_t i = 0; i < inner; ++i) dst[o + i] = src[off + i * inner_stride];
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::clone_data() const {
  Tensor out = empty(shape(), dtype());
  const size_t es = dtype_size(dtype());
  if (is_contiguous()) {
    std::memcpy(out.raw_data(), raw_data(), size_t(numel()) * es);
    return out;
  }
  switch (es) {
    case 1: copy_strided(static_cast<const uint8_t*>(raw_data()), shape(), strides(), static_cast<uint8_t*>(out.raw_data())); break;
    case 2: copy_strided(static_cast<const uint16_t*>(raw_data()), shape(), strides(), static_cast<uint16_t*>(out.raw_data())); break;
    case 4: copy_strided(static_cast<const uint32_t*>(raw_data()), shape(), strides(), static_cast<uint32_t*>(out.raw_data())); break;
    case 8: copy_strided(static_cast<const uint64_t*>(raw_data()), shape(), strides(), static_cast<uint64_t*>(out.raw_data())); break;
  }
  return out;
}

Tensor Tensor::contiguous_data() const {
  if (is_contiguous()) return detach();
  return clone_data();
}

std::vector<float> Tensor::to_vector() const {
  Tensor c = contiguous_data();
  const float* p = c.data<float>();
  return std::vector<float>(p, p + c.numel());
}

std::vector<int64_t> Tensor::to_int_vector() const {
  Tensor c = contiguous_data();
  const int64_t* p = c.data<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

float Tensor::item() const {
  EF_CHECK(numel() == 1, ShapeError, "item: tensor of shape ", shape_str(shape()), " has ", numel(),
           " elements; expected 1");
  return *data<float>();
}

std::string Tensor::describe() const {
  return detail::concat("Tensor", shape_str(shape()), " ", dtype_name(dtype()));
}

}  // namespace eformer
