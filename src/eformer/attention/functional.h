// The functional form of every mechanism that has one, by name: the same math callable from C++,
// the CLI and Python on explicit q, k, v [B, H, N, d] tensors. Dispatch goes through the registry.
#pragma once
#include <string>
#include <vector>

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/kernels/full.h"
#include "eformer/attention/options.h"
#include "eformer/attention/registry.h"

namespace eformer::attention {

// The functional form of mechanism `kind` with its own options `args`; an unknown kind, or one
// without a functional form, is a ValueError listing the valid ones.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind = "flash",
                 const AttentionOptions& opts = {}, const MechanismArgs& args = {});

// The names `attention` accepts (registered mechanisms with a functional form), in registration order.
std::vector<std::string> attention_kinds();

}  // namespace eformer::attention
