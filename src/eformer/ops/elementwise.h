// Broadcasting binary ops (add, sub, mul, div) and scalar ops, with gradients reduced back to
// each input's shape (sum_to). Broadcasting follows NumPy/PyTorch rules.
#pragma once
#include "eformer/core/tensor.h"

namespace eformer {

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Sums `x` over the broadcast dims so that it has `shape` (the gradient of a broadcast).
Tensor sum_to(const Tensor& x, const Shape& shape);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);

Tensor add_scalar(const Tensor& x, float s);  // x + s
Tensor mul_scalar(const Tensor& x, float s);  // x * s
Tensor rsub_scalar(const Tensor& x, float s);  // s - x
Tensor rdiv_scalar(const Tensor& x, float s);  // s / x
Tensor neg(const Tensor& x);
Tensor pow_scalar(const Tensor& x, float p);  // x ** p

}  // namespace eformer
