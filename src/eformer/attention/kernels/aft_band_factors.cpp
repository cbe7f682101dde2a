// AFT-local's factorized band (kernels/aft.h): band[h, t, j] = u[h, t] . v[h, t + j - p] (eq. 7 inside
// the window), one dot product of d' per (query, offset), and its backward in one pass: each thread owns
// whole rows of du and dv (dv[h, t'] gathers the queries whose window holds key t'), so no two threads
// add into one row and the bits do not depend on the thread count.
#include <algorithm>

#include "eformer/attention/kernels/aft.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"

namespace eformer::attention {

// Rows (h, t) per thread at least.
constexpr int64_t kGrain = 64;

Tensor aft_band_from_factors(const Tensor& u, const Tensor& v, const AftLayout& layout, int64_t N, const char* op) {
  EF_CHECK(u.defined() && v.defined() && u.dtype() == DType::Float32 && v.dtype() == DType::Float32 &&
               u.dim() == 3 && u.shape() == v.shape() && u.size(1) >= N && N >= 0,
           ShapeError, op, ": the factors are ", u.defined() ? u.describe() : std::string("undefined"), " and ",
           v.defined() ? v.describe() : std::string("undefined"), "; expected one float32 shape [heads, >= ", N,
           ", d']");
  EF_CHECK(layout.kind == AftBias::Band && layout.S >= 1 && layout.p >= 0 && layout.p < layout.S, ValueError, op,
           ": expected a Band layout with 0 <= p < S, got S = ", layout.S, ", p = ", layout.p);
  const Tensor uc = u.contiguous_data(), vc = v.contiguous_data();
  const int64_t H = u.size(0), L = u.size(1), e = u.size(2), S = layout.S, p = layout.p;
  Tensor band = Tensor::empty({H, N, S});
  const float *pu = uc.data<float>(), *pv = vc.data<float>();
  float* pb = band.data<float>();
  parallel::parallel_for(H * N, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r / N, t = r % N;
      const float* ut = pu + (h * L + t) * e;
      for (int64_t j = 0; j < S; ++j) {
        const int64_t key = t + j - p;
        float dot = 0.0f;
        if (key >= 0 && key < N) {
          const float* vk = pv + (h * L + key) * e;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < e; ++c) dot += ut[c] * vk[c];
        }
        pb[r * S + j] = dot;
      }
    }
  });
  return autograd::record("aft_band_from_factors", band, {u, v}, [uc, vc, H, L, e, S, p, N](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    Tensor du = Tensor::zeros({H, L, e}), dv = Tensor::zeros({H, L, e});
    const float *pu = uc.data<float>(), *pv = vc.data<float>(), *pg = gc.data<float>();
    float *pdu = du.data<float>(), *pdv = dv.data<float>();
    parallel::parallel_for(H * N, kGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t h = r / N, t = r % N;
        float *dut = pdu + (h * L + t) * e, *dvt = pdv + (h * L + t) * e;
        for (int64_t j = 0; j < S; ++j) {
          const int64_t key = t + j - p;  // du[h, t] += g[h, t, j] v[h, key]
          if (key >= 0 && key < N) {
            const float gj = pg[r * S + j];
            const float* vk = pv + (h * L + key) * e;
#pragma omp simd
            for (int64_t c = 0; c < e; ++c) dut[c] += gj * vk[c];
          }
          const int64_t query = t - j + p;  // dv[h, t] += g[h, query, j] u[h, query]
          if (query >= 0 && query < N) {
            const float gj = pg[(h * N + query) * S + j];
            const float* uq = pu + (h * L + query) * e;
#pragma omp simd
            for (int64_t c = 0; c < e; ++c) dvt[c] += gj * uq[c];
          }
        }
      }
    });
    return std::vector<Tensor>{du, dv};
  });
}

}  // namespace eformer::attention
