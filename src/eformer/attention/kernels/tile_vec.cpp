#include "eformer/attention/kernels/tile_vec.h"

namespace eformer::kernels::tile {

void exp_lanes(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kWidth) store(y + i, exp(load(x + i)));
}

}  // namespace eformer::kernels::tile
