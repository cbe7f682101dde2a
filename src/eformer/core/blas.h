// The GEMM wrapper: row-major sgemm through oneDNN (chosen by measurement, docs/BENCHMARKS.md).
#pragma once
#include <cstdint>

namespace eformer::blas {

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N].
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace eformer::blas
