// Modules models are built from: #include "eformer/nn/nn.h".
#pragma once
#include "eformer/nn/dropout.h"
#include "eformer/nn/embedding.h"
#include "eformer/nn/feed_forward.h"
#include "eformer/nn/linear.h"
#include "eformer/nn/module.h"
#include "eformer/nn/normalization.h"
#include "eformer/nn/positional.h"
