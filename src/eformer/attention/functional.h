// The functional core of the attention registry: the math of every mechanism that works on
// explicit q, k, v [B, H, N, d] tensors, callable by name from C++, the CLI and Python.
#pragma once
#include <string>
#include <vector>

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/kernels/full.h"
#include "eformer/attention/options.h"

namespace eformer::attention {

// Dispatches to the mechanism `kind` ("full", "flash", "performer", "linear"); an unknown kind is
// a ValueError listing the valid ones.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind = "flash",
                 const AttentionOptions& opts = {});

// The names `attention` accepts, in registration order.
std::vector<std::string> attention_kinds();

}  // namespace eformer::attention
