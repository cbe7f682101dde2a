// Whole architectures: #include "eformer/models/models.h".
#pragma once
#include "eformer/models/block.h"
#include "eformer/models/config.h"
#include "eformer/models/embedding.h"
#include "eformer/models/encoder.h"
#include "eformer/models/language_model.h"
