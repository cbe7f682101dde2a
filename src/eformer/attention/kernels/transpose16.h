// A 16 x 16 float tile transposed in registers (AVX-512): dst[c ldd + r] = src[r lds + c], r, c < 16.
// Element-wise copies of a transpose touch a new cache line per element on one side; this reads 16 rows
// and writes 16 rows through 64 two-vector shuffles (the unpack / shuffle / 128-bit-lane-shuffle steps,
// written as GCC vector shuffles: the intrinsics' undefined sources trip -Wuninitialized in GCC 12).
// kTranspose16 says whether it is available; callers keep an element-wise loop otherwise.
#pragma once
#include <cstdint>

#include "eformer/attention/kernels/tile_vec.h"

namespace eformer::kernels {

#ifdef __AVX512F__
inline constexpr bool kTranspose16 = true;

inline void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  using tile::Vec;
  Vec r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = tile::load(src + i * lds);
  for (int i = 0; i < 16; i += 2) {  // rows i, i + 1 interleaved within each 128-bit lane (unpack lo / hi)
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[i + 1] =
        __builtin_shufflevector(r[i], r[i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + j], 128-bit lane L: column 4 L + j of rows i .. i + 3
    r[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    r[i + 1] =
        __builtin_shufflevector(t[i], t[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    r[i + 2] =
        __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    r[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15,
                                       30, 31);
  }
  // 128-bit lanes 0 and 2 of a, then of b; and lanes 1 and 3
  auto even = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  };
  auto odd = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  };
  for (int j = 0; j < 4; ++j) {
    t[j] = even(r[j], r[j + 4]);
    t[j + 4] = odd(r[j], r[j + 4]);
    t[j + 8] = even(r[j + 8], r[j + 12]);
    t[j + 12] = odd(r[j + 8], r[j + 12]);
  }
  for (int j = 0; j < 4; ++j) {
    tile::store(dst + j * ldd, even(t[j], t[j + 8]));
    tile::store(dst + (j + 8) * ldd, odd(t[j], t[j + 8]));
    tile::store(dst + (j + 4) * ldd, even(t[j + 4], t[j + 12]));
    tile::store(dst + (j + 12) * ldd, odd(t[j + 4], t[j + 12]));
  }
}
#else
inline constexpr bool kTranspose16 = false;
inline void transpose16(const float*, int64_t, float*, int64_t) {}
#endif

}  // namespace eformer::kernels
