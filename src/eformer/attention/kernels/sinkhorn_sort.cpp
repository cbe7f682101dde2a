// The soft block permutation of Sparse Sinkhorn attention (kernels/sinkhorn.h): the SortNet and the
// Gumbel-Sinkhorn balancing of one (batch, head) per work item, forward and backward side by side.
// Every step keeps what its backward needs: the SortNet's hidden layer, the logits X0 and, per
// iteration, bidirectional: the scaling vectors u, v (sinkhorn_balance.h); causal: the two log-space
// matrices (the running column log-sum-exps L and the row log-softmax output).
#include "eformer/attention/kernels/sinkhorn_sort.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/attention/kernels/sinkhorn_balance.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels::sinkhorn_sort {
namespace {

constexpr float kMasked = -1e30f;  // a log-space entry exp() sends to 0 (causal j >= i)

// Row log-softmax of x [n, n] into y; causal: row i over j < i only (the rest kMasked; row 0 all kMasked).
void log_softmax_rows(const float* x, float* y, int64_t n, bool causal) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t w = causal ? i : n;
    const float* xr = x + i * n;
    float* yr = y + i * n;
    const float m = attention::OnlineSoftmax::max_of(xr, w);
    std::copy(xr, xr + w, yr);  // exp(x - m) in y's row for its sum, overwritten below
    const float shift = m + std::log(attention::OnlineSoftmax::exp_in_place(yr, w, m));
    for (int64_t j = 0; j < w; ++j) yr[j] = xr[j] - shift;
    for (int64_t j = w; j < n; ++j) yr[j] = kMasked;
  }
}

// Causal column step: L_ij = log sum_{j < k <= i} exp(x_kj) (the rows that may select block j, as a
// running maximum m_j and sum s_j: logits of a trained model pass exp's range), z = x - L where j < i
// (kMasked elsewhere). Rows in order, the columns of a row vectorized; m, s: scratch [n].
void causal_column_step(const float* x, float* L, float* z, int64_t n, float* m, float* s) {
  std::fill(m, m + n, -std::numeric_limits<float>::infinity());
  std::fill(s, s + n, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * n;
    float *Lr = L + i * n, *zr = z + i * n;
#pragma omp simd
    for (int64_t j = 0; j < i; ++j) {
      const float mx = std::max(m[j], xr[j]);
      s[j] = s[j] * fast_exp(m[j] - mx) + fast_exp(xr[j] - mx);  // m = -inf at the first row: 0 + 1
      m[j] = mx;
      Lr[j] = mx + std::log(s[j]);
      zr[j] = xr[j] - Lr[j];
    }
    std::fill(Lr + i, Lr + n, kMasked);
    std::fill(zr + i, zr + n, kMasked);
  }
}

// Backward of the row log-softmax y: gx = gy - exp(y) sum_row(gy), in place (causal: over j < i, 0
// elsewhere).
void log_softmax_rows_backward(const float* y, float* g, int64_t n, bool causal) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t w = causal ? i : n;
    float* gr = g + i * n;
    const float* yr = y + i * n;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < w; ++j) s += gr[j];
    for (int64_t j = 0; j < w; ++j) gr[j] -= fast_exp(yr[j]) * s;
    for (int64_t j = w; j < n; ++j) gr[j] = 0.f;
  }
}

// Backward of z = x - L(x) (causal_column_step), in place: gx_kj = gz_kj - exp(x_kj - L_kj) r_kj with
// r_kj = sum_{i >= k} gz_ij exp(L_kj - L_ij), run from the last row up (r_k = gz_k + r_{k+1} e^{L_k -
// L_{k+1}}, the factor <= 1 as L grows down a column); 0 where j >= k. r: scratch [n].
void causal_column_step_backward(const float* x, const float* L, float* g, int64_t n, float* r) {
  std::fill(r, r + n, 0.f);
  for (int64_t k = n - 1; k >= 0; --k) {
    const float *xr = x + k * n, *Lr = L + k * n;
    float* gr = g + k * n;
    if (k + 1 < n) {
      const float* Lnext = Lr + n;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) r[j] *= fast_exp(Lr[j] - Lnext[j]);
    }
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) {
      r[j] += gr[j];
      gr[j] -= fast_exp(xr[j] - Lr[j]) * r[j];
    }
    std::fill(gr + k, gr + n, 0.f);
  }
}

// psi [n, d] of one head from its blocks [n b, d]: each block's key sum; causal: row i the sum of block
// i - 1 (row 0: zero), so that row i of P depends on no key of block i or later.
void block_summaries(const float* blocks, float* psi, const SortDims& s) {
  const int64_t n = s.n, b = s.b, d = s.d, shift = s.causal ? 1 : 0;
  std::fill(psi, psi + n * d, 0.f);
  for (int64_t i = shift; i < n; ++i)
    for (int64_t t = 0; t < b; ++t)
      for (int64_t c = 0; c < d; ++c) psi[i * d + c] += blocks[((i - shift) * b + t) * d + c];
}

// The backward of block_summaries: every key of block j receives d psi of the row that summed it
// (accumulate: added to gblocks).
void block_summaries_backward(const float* gpsi, float* gblocks, const SortDims& s, bool accumulate) {
  const int64_t n = s.n, b = s.b, d = s.d, shift = s.causal ? 1 : 0;
  for (int64_t j = 0; j < n; ++j) {
    const float* g = j + shift < n ? gpsi + (j + shift) * d : nullptr;
    for (int64_t t = 0; t < b; ++t) {
      float* out = gblocks + (j * b + t) * d;
      if (accumulate && g) {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) out[c] += g[c];
      } else if (g) {
        std::copy(g, g + d, out);
      } else if (!accumulate) {
        std::fill(out, out + d, 0.f);
      }
    }
  }
}

// Per (batch, head) of the balancing's states: 2 * iterations [n, n] matrices (causal) or [n] vectors
// (bidirectional).
int64_t state_size(const SortDims& s) { return s.causal ? s.n * s.n : s.n; }
int64_t states_per_head(const SortDims& s) { return 2 * s.iterations * state_size(s); }

// The SortNet of one head: hidden = relu(psi W1 + b1), X0 = (hidden W2[:, :n] + b2 + gumbel) / tau.
void sort_net_forward(const float* psi, const float* w1, const float* b1, const float* w2, const float* b2,
                      const float* gumbel, float* hidden, float* x0, const SortDims& s) {
  const int64_t n = s.n, hd = s.hidden;
  blas::sgemm(false, false, n, hd, s.d, 1.f, psi, s.d, w1, hd, 0.f, hidden, hd);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < hd; ++c) hidden[i * hd + c] = std::max(hidden[i * hd + c] + b1[c], 0.f);
  blas::sgemm(false, false, n, n, hd, 1.f, hidden, hd, w2, s.n_max, 0.f, x0, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float r = x0[i * n + j] + b2[j];
      x0[i * n + j] = (gumbel ? r + gumbel[i * n + j] : r) * s.inv_temperature;
    }
}

// The balancing of one head from X0: states (2 per iteration) and P. scratch: 3 n floats.
void balance_forward(const float* x0, float* states, float* P, float* scratch, const SortDims& s) {
  const int64_t n = s.n, nn = n * n;
  if (!s.causal) return sinkhorn_scaling_forward(x0, states, P, scratch, n, s.iterations);
  // X0 masked to j < i: the first column step's input (kept in P until the end)
  float* masked = P;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) masked[i * n + j] = j < i ? x0[i * n + j] : kMasked;
  const float* x = masked;
  for (int64_t t = 0; t < s.iterations; ++t) {
    float* a = states + 2 * t * nn;
    float* c = a + nn;
    // a = L, c = the row log-softmax of x - L (z in P's storage until the end)
    causal_column_step(x, a, P, n, scratch, scratch + n);
    log_softmax_rows(P, c, n, true);
    x = c;
  }
  for (int64_t e = 0; e < nn; ++e) P[e] = fast_exp(x[e]);  // kMasked (j >= i) gives 0 exactly
}

// dX0 of one head from dP (in place in g): the balancing's backward. scratch: 3 n floats, and n^2 more
// when causal.
void balance_backward(const float* x0, const float* states, const float* P, float* g, float* scratch,
                      const SortDims& s) {
  const int64_t n = s.n, nn = n * n;
  if (!s.causal) return sinkhorn_scaling_backward(x0, states, P, g, scratch, n, s.iterations);
  float *sum = scratch, *xin = scratch + 3 * n;
  for (int64_t e = 0; e < nn; ++e) g[e] *= P[e];  // exp' = exp (0 where masked)
  for (int64_t t = s.iterations - 1; t >= 0; --t) {
    const float* a = states + 2 * t * nn;
    const float* c = a + nn;
    log_softmax_rows_backward(c, g, n, true);
    // the column step's input: X0 masked (t = 0) or the previous row output (kMasked at j >= i alike)
    const float* prev = t > 0 ? states + (2 * t - 1) * nn : nullptr;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        xin[i * n + j] = j < i ? (prev ? prev[i * n + j] : x0[i * n + j]) : kMasked;
    causal_column_step_backward(xin, a, g, n, sum);
  }
}

// The SortNet's backward for head h over the batch (weight gradients summed in batch order):
// gR = dX0 / tau, then through R = hidden W2 + b2 and hidden = relu(psi W1 + b1).
void sort_net_backward(int64_t h, const float* psi, const float* w1, const float* w2, const float* hidden,
                       const float* gR, float* gpsi, float* gw1, float* gb1, float* gw2, float* gb2,
                       float* ghid, const SortDims& s) {
  const int64_t n = s.n, hd = s.hidden, d = s.d;
  const float* w1h = w1 + h * d * hd;
  const float* w2h = w2 + h * hd * s.n_max;
  for (int64_t bb = 0; bb < s.B; ++bb) {
    const int64_t bh = bb * s.H + h;
    const float* g = gR + bh * n * n;
    const float* hh = hidden + bh * n * hd;
    const float* ph = psi + bh * n * d;
    blas::sgemm(true, false, hd, n, n, 1.f, hh, hd, g, n, 1.f, gw2 + h * hd * s.n_max, s.n_max);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) gb2[h * s.n_max + j] += g[i * n + j];
    blas::sgemm(false, true, n, hd, n, 1.f, g, n, w2h, s.n_max, 0.f, ghid, hd);
    for (int64_t e = 0; e < n * hd; ++e) ghid[e] = hh[e] > 0.f ? ghid[e] : 0.f;  // relu'
    blas::sgemm(true, false, d, hd, n, 1.f, ph, d, ghid, hd, 1.f, gw1 + h * d * hd, hd);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < hd; ++c) gb1[h * hd + c] += ghid[i * hd + c];
    blas::sgemm(false, true, n, d, hd, 1.f, ghid, hd, w1h, hd, 0.f, gpsi + bh * n * d, d);
  }
}

}  // namespace

SortState sort_forward(const Tensor& blocks, int64_t b, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                       const Tensor& b2, const Tensor& gumbel, const SinkhornSortSizes& sizes,
                       const std::function<void(int64_t bh, const float* P)>& after_item) {
  const char* op = "sinkhorn_permutation";
  EF_CHECK(blocks.dim() == 4 && w1.dim() == 3 && b1.dim() == 2 && w2.dim() == 3 && b2.dim() == 2, ShapeError,
           op, ": blocks ", blocks.describe(), ", w1 ", w1.describe(), ", b1 ", b1.describe(), ", w2 ",
           w2.describe(), ", b2 ", b2.describe(),
           "; expected [B, H, n b, d], [H, d, hidden], [H, hidden], [H, hidden, n_max], [H, n_max]");
  SortDims s{blocks.size(0),   blocks.size(1),        sizes.n,     b, blocks.size(3), w1.size(2), w2.size(2),
             sizes.iterations, sizes.inv_temperature, sizes.causal};
  const int64_t B = s.B, H = s.H, n = s.n, d = s.d, hd = s.hidden, nn = n * n;
  EF_CHECK(b > 0 && n > 0 && blocks.size(2) == n * b && n <= s.n_max && w1.shape() == (Shape{H, d, hd}) &&
               b1.shape() == (Shape{H, hd}) && w2.shape() == (Shape{H, hd, s.n_max}) &&
               b2.shape() == (Shape{H, s.n_max}),
           ShapeError, op, ": blocks ", blocks.describe(), " (", n, " blocks of ", b, "), w1 ", w1.describe(),
           ", b1 ", b1.describe(), ", w2 ", w2.describe(), ", b2 ", b2.describe(), " do not fit");
  EF_CHECK(!gumbel.defined() || gumbel.shape() == (Shape{B, H, n, n}), ShapeError, op, ": gumbel is ",
           gumbel.describe(), "; expected [", B, ", ", H, ", ", n, ", ", n, "]");
  EF_CHECK(s.iterations >= 1, ValueError, op, ": iterations = ", s.iterations, "; expected at least 1");
  const Tensor xc = blocks.contiguous_data(), b1c = b1.contiguous_data(), b2c = b2.contiguous_data();
  const Tensor gc = gumbel.defined() ? gumbel.contiguous_data() : Tensor();
  SortState st{s,
               w1.contiguous_data(),
               w2.contiguous_data(),
               Tensor::empty({B, H, n, d}),
               Tensor::empty({B, H, n, hd}),
               Tensor::empty({B, H, n, n}),
               Tensor::empty({B, H, 2 * s.iterations, state_size(s)}),
               Tensor::empty({B, H, n, n}),
               gumbel.defined()};
  for_each_item(B * H, 3 * n, [&](int64_t bh, float* scratch) {
    const int64_t h = bh % H;
    float* x0 = st.x0.data<float>() + bh * nn;
    float* psi = st.psi.data<float>() + bh * n * d;
    block_summaries(xc.data<float>() + bh * n * b * d, psi, s);
    sort_net_forward(psi, st.w1.data<float>() + h * d * hd, b1c.data<float>() + h * hd,
                     st.w2.data<float>() + h * hd * s.n_max, b2c.data<float>() + h * s.n_max,
                     gc.defined() ? gc.data<float>() + bh * nn : nullptr,
                     st.hidden.data<float>() + bh * n * hd, x0, s);
    balance_forward(x0, st.states.data<float>() + bh * states_per_head(s), st.P.data<float>() + bh * nn,
                    scratch, s);
    if (after_item) after_item(bh, st.P.data<float>() + bh * nn);
  });
  return st;
}

SortGradients sort_backward(const SortState& st, const Tensor& dP, bool dP_is_scratch, float* dblocks,
                            bool accumulate, const std::function<void(int64_t h)>& after_head) {
  const SortDims& s = st.dims;
  const int64_t B = s.B, H = s.H, n = s.n, nn = n * n, hd = s.hidden, d = s.d;
  Tensor gR = dP_is_scratch ? dP : dP.contiguous_data().clone_data();
  Tensor gpsi = Tensor::empty({B, H, n, d});
  SortGradients grads{Tensor::zeros({H, d, hd}), Tensor::zeros({H, hd}), Tensor::zeros({H, hd, s.n_max}),
                      Tensor::zeros({H, s.n_max}), Tensor()};
  // One item per head (its weight gradients summed over the batch in order): the balancing's backward
  // for each sequence, then the SortNet's and the block sums'.
  const int64_t balance_scratch = 3 * n + (s.causal ? nn : 0);
  for_each_item(H, balance_scratch + n * hd, [&](int64_t h, float* scratch) {
    for (int64_t bb = 0; bb < B; ++bb) {
      const int64_t bh = bb * H + h;
      float* gh = gR.data<float>() + bh * nn;
      balance_backward(st.x0.data<float>() + bh * nn, st.states.data<float>() + bh * states_per_head(s),
                       st.P.data<float>() + bh * nn, gh, scratch, s);
      for (int64_t i = 0; i < n; ++i)  // causal: X0 was masked to j < i, so the rest has no gradient
        for (int64_t j = 0; j < n; ++j)
          gh[i * n + j] = s.causal && j >= i ? 0.f : gh[i * n + j] * s.inv_temperature;
    }
    sort_net_backward(h, st.psi.data<float>(), st.w1.data<float>(), st.w2.data<float>(),
                      st.hidden.data<float>(), gR.data<float>(), gpsi.data<float>(), grads.w1.data<float>(),
                      grads.b1.data<float>(), grads.w2.data<float>(), grads.b2.data<float>(),
                      scratch + balance_scratch, s);
    for (int64_t bb = 0; bb < B; ++bb) {
      const int64_t bh = bb * H + h;
      block_summaries_backward(gpsi.data<float>() + bh * n * d, dblocks + bh * n * s.b * d, s, accumulate);
    }
    if (after_head) after_head(h);
  });
  if (st.with_gumbel) grads.gumbel = gR;
  return grads;
}

}  // namespace eformer::kernels::sinkhorn_sort

namespace eformer::kernels {

Tensor sinkhorn_permutation(const Tensor& blocks, int64_t b, const Tensor& w1, const Tensor& b1,
                            const Tensor& w2, const Tensor& b2, const Tensor& gumbel,
                            const SinkhornSortSizes& sizes) {
  using namespace sinkhorn_sort;
  auto st = std::make_shared<const SortState>(sort_forward(blocks, b, w1, b1, w2, b2, gumbel, sizes));
  std::vector<Tensor> inputs = {blocks, w1, b1, w2, b2};
  if (gumbel.defined()) inputs.push_back(gumbel);
  return autograd::record("sinkhorn_permutation", st->P.detach(), inputs, [st](const Tensor& g) {
    const SortDims& s = st->dims;
    Tensor gblocks = Tensor::empty({s.B, s.H, s.n * s.b, s.d});
    SortGradients grads = sort_backward(*st, g, false, gblocks.data<float>(), false);
    std::vector<Tensor> out = {gblocks, grads.w1, grads.b1, grads.w2, grads.b2};
    if (st->with_gumbel) out.push_back(grads.gumbel);
    return out;
  });
}

}  // namespace eformer::kernels
