// The public umbrella header: #include "eformer/eformer.h".
#pragma once
#include "eformer/attention/functional.h"
#include "eformer/attention/mechanisms/exact.h"
#include "eformer/attention/mechanisms/performer.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/allocator.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"
#include "eformer/core/tensor.h"
#include "eformer/data/data.h"
#include "eformer/io/io.h"
#include "eformer/models/models.h"
#include "eformer/nn/nn.h"
#include "eformer/ops/ops.h"
#include "eformer/optim/optim.h"
#include "eformer/train/train.h"

namespace eformer {
inline constexpr const char* kVersion = "0.1.0";
}
