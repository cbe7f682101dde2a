// AFT's query gate (kernels/aft.h): Y = sigmoid(Q) (.) A in one pass, and its backward in one pass,
// instead of sigmoid, mul and their three backward passes over [B, H, N, d] (with a temporary each).
// The same float operations in the same order as sigmoid then mul, so the results are the same bits.
#include "eformer/attention/kernels/aft.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer::attention {

// Elements per thread at least (elementwise: any split gives the same bits).
constexpr int64_t kGrain = 32768;

Tensor aft_gate(const Tensor& q, const Tensor& A, const char* op) {
  EF_CHECK(q.defined() && A.defined() && q.dtype() == DType::Float32 && A.dtype() == DType::Float32 &&
               q.shape() == A.shape(),
           ShapeError, op, ": q is ", q.defined() ? q.describe() : std::string("undefined"),
           " and the average ", A.defined() ? A.describe() : std::string("undefined"),
           "; expected one float32 shape");
  const Tensor qc = q.contiguous_data(), ac = A.contiguous_data();
  Tensor Y = Tensor::empty(q.shape());
  const float *pq = qc.data<float>(), *pa = ac.data<float>();
  float* py = Y.data<float>();
  parallel::parallel_for(q.numel(), kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) py[i] = 1.0f / (1.0f + kernels::fast_exp(-pq[i])) * pa[i];
  });
  return autograd::record("aft_gate", Y, {q, A}, [qc, ac](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    Tensor dq = Tensor::empty(qc.shape()), dA = Tensor::empty(ac.shape());
    const float *pq = qc.data<float>(), *pa = ac.data<float>(), *pg = gc.data<float>();
    float *pdq = dq.data<float>(), *pda = dA.data<float>();
    parallel::parallel_for(qc.numel(), kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {  // d sigmoid(q) = s (1 - s)
        const float s = 1.0f / (1.0f + kernels::fast_exp(-pq[i]));
        pda[i] = pg[i] * s, pdq[i] = pg[i] * pa[i] * s * (1.0f - s);
      }
    });
    return std::vector<Tensor>{dq, dA};
  });
}

}  // namespace eformer::attention
