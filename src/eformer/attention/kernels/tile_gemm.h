// Small register-blocked GEMM for the tiles of the fused attention kernels (flash, and later
// chunked / block-sparse): C[m, n] (+)= alpha sum_k A(m, k) B[k, n] with B row-major and n a whole
// number of SIMD vectors (callers pad). A is read through two strides, so A or A^T of a row-major
// tile is free. Runs on the calling thread; every C element is summed over k in order, so results
// do not depend on threads. Written with GCC vector extensions: AVX-512 under -march=native where
// present, AVX2 + FMA otherwise.
#pragma once
#include <cstdint>
#include <cstring>

namespace eformer::kernels::tile {

#ifdef __AVX512F__
inline constexpr int64_t kWidth = 16;  // floats per vector
inline constexpr int kMaxVectors = 4;  // vectors of C per micro-tile row
#else
inline constexpr int64_t kWidth = 8;
inline constexpr int kMaxVectors = 2;
#endif
inline constexpr int kRows = 6;  // rows of C per micro-tile
typedef float Vec __attribute__((vector_size(kWidth * sizeof(float))));

inline int64_t round_up(int64_t n) { return (n + kWidth - 1) / kWidth * kWidth; }

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }
inline Vec splat(float x) { return Vec{} + x; }
// Lane-wise max that keeps a where b is NaN (as std::max(a, b) does).
inline Vec vmax(Vec a, Vec b) { return b > a ? b : a; }

// The largest lane and the sum of the lanes, as a tree (depth log2(kWidth), not a chain of kWidth - 1).
inline float reduce_max(Vec v) {
  float a[kWidth];
  std::memcpy(a, &v, sizeof(Vec));
  for (int64_t w = kWidth / 2; w > 0; w /= 2)
    for (int64_t i = 0; i < w; ++i) a[i] = a[i + w] > a[i] ? a[i + w] : a[i];
  return a[0];
}
inline float reduce_sum(Vec v) {
  float a[kWidth];
  std::memcpy(a, &v, sizeof(Vec));
  for (int64_t w = kWidth / 2; w > 0; w /= 2)
    for (int64_t i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}

// C[R, NV * kWidth] (+)= alpha A(R, K) B[K, NV * kWidth]
template <int R, int NV>
inline void micro_tile(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb,
                       float* C, int64_t ldc, float alpha, bool accumulate) {
  Vec acc[R][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * kWidth);
    for (int r = 0; r < R; ++r) {
      const float a = A[r * a_rs + k * a_cs];
      for (int v = 0; v < NV; ++v) acc[r][v] += b[v] * a;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * ldc + v * kWidth;
      store(c, accumulate ? load(c) + acc[r][v] * alpha : acc[r][v] * alpha);
    }
}

template <int NV>
inline void rows_of_tiles(int64_t M, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                          int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows)
    micro_tile<kRows, NV>(K, A + m * a_rs, a_rs, a_cs, B, ldb, C + m * ldc, ldc, alpha, accumulate);
  const float* a = A + m * a_rs;
  float* c = C + m * ldc;
  switch (M - m) {
    case 5:
      micro_tile<5, NV>(K, a, a_rs, a_cs, B, ldb, c, ldc, alpha, accumulate);
      break;
    case 4:
      micro_tile<4, NV>(K, a, a_rs, a_cs, B, ldb, c, ldc, alpha, accumulate);
      break;
    case 3:
      micro_tile<3, NV>(K, a, a_rs, a_cs, B, ldb, c, ldc, alpha, accumulate);
      break;
    case 2:
      micro_tile<2, NV>(K, a, a_rs, a_cs, B, ldb, c, ldc, alpha, accumulate);
      break;
    case 1:
      micro_tile<1, NV>(K, a, a_rs, a_cs, B, ldb, c, ldc, alpha, accumulate);
      break;
    default:
      break;
  }
}

// C[M, N] = alpha A B (accumulate: C += alpha A B); A(m, k) = A[m a_rs + k a_cs], B [K, N] with
// row stride ldb, C with row stride ldc; N must be a multiple of kWidth.
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                 int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  int64_t n = 0;
  for (; n + kMaxVectors * kWidth <= N; n += kMaxVectors * kWidth)
    rows_of_tiles<kMaxVectors>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, alpha, accumulate);
  switch ((N - n) / kWidth) {
#ifdef __AVX512F__
    case 3:
      rows_of_tiles<3>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, alpha, accumulate);
      break;
    case 2:
      rows_of_tiles<2>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, alpha, accumulate);
      break;
#endif
    case 1:
      rows_of_tiles<1>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, alpha, accumulate);
      break;
    default:
      break;
  }
}

}  // namespace eformer::kernels::tile
