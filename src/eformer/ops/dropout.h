// Dropout (Srivastava et al. 2014): zero each element with probability p, scale the kept ones by
// 1 / (1 - p). The mask is never stored: element i is kept iff the uniform draw that
// rng::fill_uniform gives element i of the reserved counter range is >= p, a function of
// (seed, stream, counter) only. So the backward regenerates it, autograd::checkpoint replays it
// (it restores the generator state), and it does not depend on the thread count.
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// Reserves ceil(numel / 4) counters of the default generator when training and p > 0; returns x
// itself when !training or p == 0. p outside [0, 1) is a ValueError.
Tensor dropout(const Tensor& x, float p, bool training = true);

namespace kernels {
// x, y [n]: y[i] = keep(i) ? x[i] / (1 - p) : 0, keep(i) as above for the range starting at `counter`.
void dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t seed, uint64_t stream,
                     uint64_t counter);
// dy, dx [n]: dx[i] = keep(i) ? dy[i] / (1 - p) : 0, the same mask regenerated from the same counters.
void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed, uint64_t stream,
                      uint64_t counter);
}  // namespace kernels

}  // namespace eformer
