// Tensor: a shape, strides and an offset over a shared, counted storage, with a dtype.
// Views (reshape, transpose, slice) share storage; kernels take contiguous data.
// Autograd history hangs off an opaque AutogradMeta that the autograd layer defines.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eformer/core/error.h"

namespace eformer {

// Float32 is the compute type; Int64 holds indices and token ids; Bool holds masks.
// BFloat16 is reserved for the AMX path and not yet accepted by any op.
enum class DType : uint8_t { Float32, Int64, Bool, BFloat16 };
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::Float32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::Int64; }
template <>
constexpr DType dtype_of<bool>() { return DType::Bool; }

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
// The most elements one tensor may have (2^48, a petabyte of float32): a size from outside
// (a config, a checkpoint, a Python shape) beyond it is an error, never an overflow.
constexpr int64_t kMaxNumel = int64_t(1) << 48;
// a * b for sizes; ValueError naming `what` when the product exceeds kMaxNumel (or a factor is < 0).
int64_t checked_mul(int64_t a, int64_t b, const std::string& what);
// The product of the sizes; ValueError naming the shape when a size is negative or the product
// exceeds kMaxNumel.
int64_t numel_of(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
// Maps a possibly negative dim into [0, ndim); throws IndexError naming `op` otherwise.
int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op);

// Bytes owned through the counting allocator.
class Storage {
 public:
  explicit Storage(size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_;
  size_t bytes_;
};

struct AutogradMeta;  // eformer/autograd/meta.h

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::Float32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape);
  static Tensor scalar(float value) { return full({}, value); }

  bool defined() const { return impl_ != nullptr; }
  DType dtype() const { return impl().dtype; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return int64_t(impl().shape.size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_of(impl().shape); }
  bool is_contiguous() const;

  // Pointer to the first element of this view; checks the dtype.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data");
    return static_cast<T*>(impl().storage->data()) + impl().offset;
  }
  void* raw_data() const;

  // A view sharing storage, with no autograd history (ops/shape.h wraps these differentiably).
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;
  // A fresh contiguous copy with no autograd history.
  Tensor clone_data() const;
  // This tensor if contiguous, else a contiguous copy; no autograd history either way.
  Tensor contiguous_data() const;
  // Same storage and view, without autograd history.
  Tensor detach() const;

  std::vector<float> to_vector() const;
  std::vector<int64_t> to_int_vector() const;
  float item() const;  // the single element of a one-element float tensor

  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }
  // True when no other handle or view can see this tensor's memory (it may be reused in place).
  bool is_uniquely_owned() const {
    return impl_ && impl_.use_count() == 1 && impl_->storage.use_count() == 1 && impl_->offset == 0 &&
           is_contiguous() && size_t(numel()) * dtype_size(dtype()) == impl_->storage->bytes();
  }
  std::string describe() const;  // "Tensor[2, 3] float32"

  // Autograd's slot; only the autograd layer looks inside.
  std::shared_ptr<AutogradMeta>& autograd_meta() const { return impl().autograd; }

  void check_dtype(DType expected, const char* what) const;

 private:
  struct Impl {
    std::shared_ptr<Storage> storage;
    Shape shape;
    Shape strides;
    int64_t offset = 0;
    DType dtype = DType::Float32;
    std::shared_ptr<AutogradMeta> autograd;
  };
  Impl& impl() const;
  std::shared_ptr<Impl> impl_;
};

}  // namespace eformer
