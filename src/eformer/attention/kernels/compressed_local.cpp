#include "eformer/attention/kernels/compressed_local.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer::attention {
namespace {

struct Layout {
  int64_t BH, Np, W, d, S, nb, N, c;
  bool causal;
  float scale;
  int64_t visible(int64_t b) const { return causal ? std::min(W, b * S / c) : W; }
};

// Bool [BH nb, S]: key j of block b is a real position (b S + j < N); undefined when every key is real.
Tensor real_keys(const Layout& L) {
  if (L.Np == L.N) return Tensor();
  Tensor m = Tensor::empty({L.BH * L.nb, L.S}, DType::Bool);
  bool* p = m.data<bool>();
  for (int64_t r = 0; r < L.BH * L.nb; ++r)
    for (int64_t j = 0; j < L.S; ++j) p[r * L.S + j] = (r % L.nb) * L.S + j < L.N;
  return m;
}

// Merges a second partial result (o1, l1) into (out, lse), row by row: the log-sum-exp merge of the header.
void merge_rows(float* out, float* lse, const float* o1, const float* l1, int64_t rows, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    const float hi = std::max(l1[i], lse[i]), total = hi + std::log(std::exp(l1[i] - hi) + std::exp(lse[i] - hi));
    const float w1 = std::exp(l1[i] - total), w2 = std::exp(lse[i] - total);
    for (int64_t x = 0; x < d; ++x) out[i * d + x] = w1 * o1[i * d + x] + w2 * out[i * d + x];
    lse[i] = total;
  }
}

}  // namespace

// Bidirectional: every block sees every window, so the window pass is one kernel call over all rows. Causal:
// block b sees a prefix of the windows, one call per block, the heads spread over the threads (each head's
// blocks in order on one thread, so the accumulation order, and every bit, is the same on any thread count).
Tensor compressed_local_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kc,
                                  const Tensor& vc, int64_t N, int64_t block, int64_t c, bool causal, float scale) {
  const Layout L{q.size(0) * q.size(1), q.size(2), kc.size(2), q.size(3), block, q.size(2) / block, N, c,
                 causal, scale};
  const Tensor qd = q.contiguous_data(), kd = k.contiguous_data(), vd = v.contiguous_data(),
               kcd = kc.contiguous_data(), vcd = vc.contiguous_data(), mask = real_keys(L);
  const bool* m = mask.defined() ? mask.data<bool>() : nullptr;
  const int64_t rows = L.BH * L.Np, d = L.d, S = L.S, W = L.W;
  // Local: every block is a batch of S queries over its S keys.
  Tensor out = Tensor::empty(q.shape()), lse = Tensor::empty({rows});
  kernels::flash_attention_forward(qd.data<float>(), kd.data<float>(), vd.data<float>(), m, out.data<float>(),
                                   lse.data<float>(), L.BH * L.nb, 1, S, S, d, scale, causal);
  float *po = out.data<float>(), *pl = lse.data<float>();
  const float *pq = qd.data<float>(), *pk = kcd.data<float>(), *pv = vcd.data<float>();
  if (W > 0 && !causal) {
    Tensor o1 = Tensor::empty(q.shape()), l1 = Tensor::empty({rows});
    kernels::flash_attention_forward(pq, pk, pv, nullptr, o1.data<float>(), l1.data<float>(), L.BH, 1, L.Np, W, d,
                                     scale, false);
    parallel::parallel_for(rows, 256, [&](int64_t r0, int64_t r1) {
      merge_rows(po + r0 * d, pl + r0, o1.data<float>() + r0 * d, l1.data<float>() + r0, r1 - r0, d);
    });
  } else if (W > 0) {
    kernels::for_each_item(L.BH, S * d + S, [&](int64_t bh, float* o1) {
      for (int64_t b = 0; b < L.nb; ++b) {
        const int64_t n = L.visible(b), row0 = bh * L.Np + b * S;
        if (n == 0) continue;
        kernels::flash_attention_forward(pq + row0 * d, pk + bh * W * d, pv + bh * W * d, nullptr, o1, o1 + S * d,
                                         1, 1, S, n, d, scale, false);
        merge_rows(po + row0 * d, pl + row0, o1, o1 + S * d, S, d);
      }
    });
  }
  const Tensor od = out.detach();
  return autograd::record(
      "compressed_local_attention", out, {q, k, v, kc, vc}, [qd, kd, vd, kcd, vcd, mask, od, lse, L](const Tensor& g) {
        const Tensor gd = g.contiguous_data();
        const bool* m = mask.defined() ? mask.data<bool>() : nullptr;
        const int64_t d = L.d, S = L.S, W = L.W, rows = L.BH * L.Np;
        Tensor dq = Tensor::empty(qd.shape()), dk = Tensor::empty(kd.shape()), dv = Tensor::empty(vd.shape());
        Tensor dkc = Tensor::zeros(kcd.shape()), dvc = Tensor::zeros(vcd.shape());
        const float *pq = qd.data<float>(), *pk = kcd.data<float>(), *pv = vcd.data<float>(), *po = od.data<float>(),
                    *pl = lse.data<float>(), *pg = gd.data<float>();
        kernels::flash_attention_backward(pq, kd.data<float>(), vd.data<float>(), m, po, pl, pg, dq.data<float>(),
                                          dk.data<float>(), dv.data<float>(), L.BH * L.nb, 1, S, S, d, L.scale,
                                          L.causal);
        float *pdq = dq.data<float>(), *pdk = dkc.data<float>(), *pdv = dvc.data<float>();
        if (W > 0 && !L.causal) {
          Tensor dq1 = Tensor::empty(qd.shape());
          kernels::flash_attention_backward(pq, pk, pv, nullptr, po, pl, pg, dq1.data<float>(), pdk, pdv, L.BH, 1,
                                            L.Np, W, d, L.scale, false);
          parallel::parallel_for(rows * d, 4096, [&](int64_t a, int64_t b) {
            for (int64_t x = a; x < b; ++x) pdq[x] += dq1.data<float>()[x];
          });
        } else if (W > 0) {
          kernels::for_each_item(L.BH, S * d + 2 * W * d, [&](int64_t bh, float* dq1) {
            float *dk1 = dq1 + S * d, *dv1 = dk1 + W * d;
            for (int64_t b = 0; b < L.nb; ++b) {
              const int64_t n = L.visible(b), row0 = bh * L.Np + b * S;
              if (n == 0) continue;
              kernels::flash_attention_backward(pq + row0 * d, pk + bh * W * d, pv + bh * W * d, nullptr,
                                                po + row0 * d, pl + row0, pg + row0 * d, dq1, dk1, dv1, 1, 1, S, n,
                                                d, L.scale, false);
              for (int64_t x = 0; x < S * d; ++x) pdq[row0 * d + x] += dq1[x];
              for (int64_t x = 0; x < n * d; ++x) pdk[bh * W * d + x] += dk1[x], pdv[bh * W * d + x] += dv1[x];
            }
          });
        }
        return std::vector<Tensor>{dq, dk, dv, dkc, dvc};
      });
}

}  // namespace eformer::attention
