#include "eformer/core/blas.h"

#include <dnnl.h>

#include "eformer/core/error.h"
#include "eformer/core/signals.h"

namespace eformer::blas {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // oneDNN rejects K = 0; the product is empty, so C = beta * C.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  signals::DeferSignals defer;  // never a signal frame on a JIT kernel's stack (signals.h)
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                beta, C, ldc);
  EF_CHECK(st == dnnl_success, Error, "sgemm: oneDNN failed with status ", int(st), " for M=", M, " N=", N,
           " K=", K);
}

}  // namespace eformer::blas
