// File formats and atomic writes: #include "eformer/io/io.h".
#pragma once
#include "eformer/io/atomic_file.h"
#include "eformer/io/safetensors.h"
#include "eformer/io/png.h"
