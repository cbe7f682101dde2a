// Fused attention dropout on a tile of probabilities (AttentionOptions::dropout, the FlashDropout
// rule of flash.h), shared by the flash and block-sparse kernels so both drop exactly the elements
// full_attention drops from the same generator state.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

#include "eformer/attention/kernels/flash.h"
#include "eformer/core/rng.h"

namespace eformer::kernels {

// x[r, c] *= Z_e = keep_e / (1 - p) for the tile x [rows, ld] (cols used) whose element (r, c) is
// element e = e0 + r M + c of P [B, H, N, M]; the keep rule of FlashDropout (ops/dropout.cpp's).
inline void apply_dropout(float* x, int64_t ld, int64_t rows, int64_t cols, int64_t e0, int64_t M,
                          const FlashDropout& dr) {
  const uint32_t threshold = uint32_t(std::ceil(double(dr.p) * 16777216.0));
  const float keep_scale = 1.0f / (1.0f - dr.p);
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * ld;
    std::array<uint32_t, 4> w{};
    for (int64_t c = 0, e = e0 + r * M; c < cols; ++c, ++e) {
      if (c == 0 || e % 4 == 0) w = rng::philox(dr.seed, dr.stream, dr.counter + uint64_t(e / 4));
      xr[c] = (w[size_t(e % 4)] >> 8) >= threshold ? xr[c] * keep_scale : 0.0f;
    }
  }
}

}  // namespace eformer::kernels
