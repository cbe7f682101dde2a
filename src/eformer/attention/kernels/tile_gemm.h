// Small register-blocked GEMM for the tiles of the fused attention kernels (flash, and later
// chunked / block-sparse): C[m, n] (+)= alpha sum_k A(m, k) B[k, n] with B row-major and n a whole
// number of SIMD vectors (callers pad). A is read through two strides, so A or A^T of a row-major
// tile is free. Runs on the calling thread; every C element is summed over k in order, so results
// do not depend on threads. Written with GCC vector extensions: AVX-512 under -march=native where
// present, AVX2 + FMA otherwise.
#pragma once
#include <cstdint>

#include "eformer/attention/kernels/tile_vec.h"

namespace eformer::kernels::tile {

#ifdef __AVX512F__
inline constexpr int kMaxVectors = 4;  // vectors of C per micro-tile row
#else
inline constexpr int kMaxVectors = 2;
#endif
inline constexpr int kRows = 6;  // rows of C per micro-tile

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
