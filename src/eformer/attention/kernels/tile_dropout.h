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

// The FlashDropout of a call dropping p of `elements` probabilities: it reserves ceil(elements / 4)
// counters of the default generator, as ops/dropout.h on the contiguous [B, H, N, M] probabilities, so
// every kernel drops the same elements from the same generator state. p = 0: none, nothing reserved.
inline FlashDropout reserve_dropout(float p, int64_t elements) {
  FlashDropout dr;
  if (p > 0.0f) {
    rng::Generator& gen = rng::default_generator();
    dr.p = p;
    dr.counter = gen.reserve(uint64_t(elements + 3) / 4);
    dr.seed = gen.state().seed, dr.stream = gen.state().stream;
  }
  return dr;
}

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

// As apply_dropout for a tile of reordered rows and keys (a reordered layout, block_layout.h): tile
// row r is query row_of[r] and column c is key col_of[c] (null: i0 + r, j0 + c), of head bh of P
// [B, H, N, M]: element e = ((bh N) + i) M + j, the same rule.
inline void apply_dropout_indexed(float* x, int64_t ld, int64_t rows, int64_t cols, const int64_t* row_of,
                                  int64_t i0, const int64_t* col_of, int64_t j0, int64_t bh, int64_t N,
                                  int64_t M, const FlashDropout& dr) {
  const uint32_t threshold = uint32_t(std::ceil(double(dr.p) * 16777216.0));
  const float keep_scale = 1.0f / (1.0f - dr.p);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row_of ? row_of[r] : i0 + r;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t j = col_of ? col_of[c] : j0 + c, e = (bh * N + i) * M + j;
      const uint32_t w = rng::philox(dr.seed, dr.stream, dr.counter + uint64_t(e / 4))[size_t(e % 4)];
      x[r * ld + c] = (w >> 8) >= threshold ? x[r * ld + c] * keep_scale : 0.0f;
    }
  }
}

}  // namespace eformer::kernels
