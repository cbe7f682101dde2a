// AFT's query gate (kernels/aft.h): Y = sigmoid(Q) (.) A in one pass, and its backward in one pass,
// instead of sigmoid, mul and their three backward passes over [B, H, N, d] (with a temporary each).
// The same float operations in the same order as sigmoid then mul, so the results are the same bits.
#include <algorithm>

#include "eformer/attention/kernels/aft.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"

namespace eformer::attention {
namespace {

// f(i0, i1) over [0, n) in blocks of 4096 elements across the library's threads.
template <class F>
void for_element_blocks(int64_t n, F f) {
  constexpr int64_t kBlock = 4096;
  parallel::parallel_for((n + kBlock - 1) / kBlock, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b * kBlock, std::min(n, (b + 1) * kBlock));
  });
}

}  // namespace

Tensor aft_gate(const Tensor& q, const Tensor& A, const char* op) {
  EF_CHECK(q.defined() && A.defined() && q.dtype() == DType::Float32 && A.dtype() == DType::Float32 &&
               q.shape() == A.shape(),
           ShapeError, op, ": q is ", q.defined() ? q.describe() : std::string("undefined"), " and the average ",
           A.defined() ? A.describe() : std::string("undefined"), "; expected one float32 shape");
  const Tensor qc = q.contiguous_data(), ac = A.contiguous_data();
  Tensor Y = Tensor::empty(q.shape());
  const float *pq = qc.data<float>(), *pa = ac.data<float>();
  float* py = Y.data<float>();
  for_element_blocks(q.numel(), [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) py[i] = 1.0f / (1.0f + kernels::fast_exp(-pq[i])) * pa[i];
  });
  return autograd::record("aft_gate", Y, {q, A}, [qc, ac](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    Tensor dq = Tensor::empty(qc.shape()), dA = Tensor::empty(ac.shape());
    const float *pq = qc.data<float>(), *pa = ac.data<float>(), *pg = gc.data<float>();
    float *pdq = dq.data<float>(), *pda = dA.data<float>();
    for_element_blocks(qc.numel(), [&](int64_t i0, int64_t i1) {
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
