// Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_.
#pragma once
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer::optim {

// The L2 norm of all the parameters' gradients taken together (parameters without a gradient are
// skipped), accumulated in double in a fixed order, so bit-identical on any thread count. When
// max_norm / (norm + 1e-6) < 1 every gradient is scaled in place by that factor. Returns the norm
// before clipping (NaN or inf when a gradient is, in which case nothing is scaled).
// ValueError when max_norm is negative or NaN.
float clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// The same norm without clipping.
double grad_norm(const std::vector<Tensor>& params);

}  // namespace eformer::optim
