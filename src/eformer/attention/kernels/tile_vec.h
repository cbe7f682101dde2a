// One SIMD vector of floats for the fused attention kernels' tiles (tile_gemm.h's micro-kernel, the
// online softmax's row passes): GCC vector extensions, AVX-512 under -march=native where present,
// AVX2 otherwise. Lane-wise code is written once here rather than left to `omp simd` reductions,
// which GCC compiled to a scalar chain for the row max.
#pragma once
#include <cstdint>
#include <cstring>

#include <immintrin.h>

namespace eformer::kernels::tile {

#ifdef __AVX512F__
inline constexpr int64_t kWidth = 16;  // floats per vector
#else
inline constexpr int64_t kWidth = 8;
#endif
typedef float Vec __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kWidth * sizeof(int32_t))));

inline int64_t round_up(int64_t n) { return (n + kWidth - 1) / kWidth * kWidth; }

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }
inline Vec splat(float x) { return Vec{} + x; }
// Lane-wise std::max(a, b) and std::min(a, b): a wherever either lane is NaN (as std::max and std::min).
// One instruction where the ISA has it (GCC 12 compiles the select to a compare and a masked move):
// x86's max(x, y) is x > y ? x : y, so max(b, a) = a < b ? b : a.
#if defined(__AVX512F__)  // the masked forms: _mm512_max_ps's undefined source trips -Wmaybe-uninitialized
inline Vec vmax(Vec a, Vec b) { return _mm512_mask_max_ps(a, 0xFFFF, b, a); }
inline Vec vmin(Vec a, Vec b) { return _mm512_mask_min_ps(a, 0xFFFF, b, a); }
#elif defined(__AVX__)
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(b, a); }
inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(b, a); }
#else
inline Vec vmax(Vec a, Vec b) { return a < b ? b : a; }
inline Vec vmin(Vec a, Vec b) { return b < a ? b : a; }
#endif

// v with its lanes swapped in pairs at distance w (w = kWidth / 2, ..., 1): the steps of a tree
// reduction in registers, depth log2(kWidth) instead of a chain of kWidth - 1.
#ifdef __AVX512F__
inline Vec swap8(Vec v) { return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7); }
inline Vec swap4(Vec v) { return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11); }
inline Vec swap2(Vec v) { return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13); }
inline Vec swap1(Vec v) { return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14); }
#else
inline Vec swap8(Vec v) { return v; }  // unused at 8 lanes
inline Vec swap4(Vec v) { return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3); }
inline Vec swap2(Vec v) { return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5); }
inline Vec swap1(Vec v) { return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6); }
#endif

// The largest lane (of lanes that are not NaN: max_of never feeds it one) and the sum of the lanes.
inline float reduce_max(Vec v) {
  if constexpr (kWidth == 16) v = vmax(v, swap8(v));
  v = vmax(v, swap4(v));
  v = vmax(v, swap2(v));
  return vmax(v, swap1(v))[0];
}
inline float reduce_sum(Vec v) {
  if constexpr (kWidth == 16) v += swap8(v);
  v += swap4(v);
  v += swap2(v);
  return (v + swap1(v))[0];
}

// a b + c rounded once (as std::fma), whatever the optimization level; a b + c, rounded twice, only in
// a build without FMA (the test binary's own code: the library is never built so).
inline Vec fma(Vec a, Vec b, Vec c) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(a, b, c);
#elif defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// kernels::fast_exp (ops/activation.h) lane by lane: the same operations in the same order, its
// std::fma calls as fma() above, so each lane equals fast_exp of it bit for bit.
inline Vec exp(Vec x) {
  const Vec xc = vmin(vmax(x, splat(-88.0f)), splat(88.72283f));
  const Vec shifted = fma(xc, splat(1.44269504088896341f), splat(12582912.0f));
  const Vec n = shifted - 12582912.0f;
  Vec r = fma(n, splat(-0.693359375f), xc);
  r = fma(n, splat(2.12194440e-4f), r);
  Vec p = splat(1.9875691500e-4f);
  p = fma(p, r, splat(1.3981999507e-3f));
  p = fma(p, r, splat(8.3334519073e-3f));
  p = fma(p, r, splat(4.1665795894e-2f));
  p = fma(p, r, splat(1.6666665459e-1f));
  p = fma(p, r, splat(5.0000001201e-1f));
  const Vec er = fma(p, r * r, r) + 1.0f;
  const IVec n_int = (IVec)shifted - 0x4B400000;
  return er * (Vec)((n_int + 127) << 23);
}

// y[n] = exp(x[n]) as compiled in the library (n a multiple of kWidth): its test checks the lanes
// against fast_exp; the test binary itself is compiled without the library's ISA flags.
void exp_lanes(const float* x, float* y, int64_t n);

}  // namespace eformer::kernels::tile
