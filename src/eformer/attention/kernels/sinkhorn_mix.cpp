// The sorted blocks of Sparse Sinkhorn attention beside the local keys (kernels/sinkhorn.h):
// out[:S] = P X (P [rows, n], X [n, b d]: each row of X a block of b keys), out[S:] = local.
#include "eformer/attention/kernels/sinkhorn_mix.h"

#include <algorithm>
#include <cstring>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/attention/kernels/transpose16.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"

namespace eformer::kernels::sinkhorn_mix {

// Each item's GEMM re-reads (packs) the other operand, so few large chunks; strictly lower: about 8 per
// head, so that the zero triangle is skipped in steps of 1/8; otherwise at least 8 items in all (whole
// heads from 8 heads on).
int64_t row_chunk(int64_t rows, const MixSizes& s) {
  auto round_up = [](int64_t x) { return std::max<int64_t>(64, (x + 63) / 64 * 64); };
  if (s.lower) return round_up((rows + 7) / 8);
  const int64_t per_head = (8 + s.BH - 1) / s.BH;
  return round_up((rows + per_head - 1) / per_head);
}

// Strictly lower: row r needs only j < r.
void mix_forward(const float* P, const float* X, float* out, int64_t r0, int64_t r1, const MixSizes& s) {
  const int64_t K = s.lower ? std::min(s.n, r1 - 1) : s.n;
  if (K <= 0) {
    std::memset(out + r0 * s.bd, 0, size_t((r1 - r0) * s.bd) * sizeof(float));
    return;
  }
  blas::sgemm(false, false, r1 - r0, s.bd, K, 1.f, P + r0 * s.n, s.n, X, s.bd, 0.f, out + r0 * s.bd, s.bd);
}

// Whether dP = dOut X^T goes through the tile GEMM on X^T (bidirectional, whole 16 x 16 tiles, X^T at most
// 1 MiB: few blocks, e.g. 64 at 4K tokens): oneDNN runs that shape, a small [n, n] output over a long inner
// dimension b d, at about a third of its rate (docs/BENCHMARKS.md); the transpose costs a copy of X.
bool tile_dP(const MixSizes& s) {
  return kTranspose16 && !s.lower && s.n % 16 == 0 && s.bd % 16 == 0 && s.n * s.bd <= (int64_t(1) << 18);
}

void mix_backward_P(const float* dout, const float* X, float* dP, int64_t r0, int64_t r1, const MixSizes& s,
                    bool accumulate) {
  if (tile_dP(s)) {
    ScratchBuffer xt(s.bd * s.n);  // X^T [bd, n]
    for (int64_t j = 0; j < s.n; j += 16)
      for (int64_t k = 0; k < s.bd; k += 16) transpose16(X + j * s.bd + k, s.bd, xt.data + k * s.n + j, s.n);
    tile::gemm(r1 - r0, s.n, s.bd, dout + r0 * s.bd, s.bd, 1, xt.data, s.n, dP + r0 * s.n, s.n, 1.f,
               accumulate);
    return;
  }
  const int64_t K = s.lower ? std::min(s.n, r1 - 1) : s.n;
  if (K > 0)
    blas::sgemm(false, true, r1 - r0, K, s.bd, 1.f, dout + r0 * s.bd, s.bd, X, s.bd, accumulate ? 1.f : 0.f,
                dP + r0 * s.n, s.n);
  for (int64_t r = r0; r < r1; ++r) {  // strictly lower: the GEMM wrote j in [r, K) too
    const int64_t j0 = s.lower ? std::min(s.n, r) : K;
    std::fill(dP + r * s.n + std::max<int64_t>(j0, 0), dP + (r + 1) * s.n, 0.f);
  }
}

// Strictly lower: only rows r > j of P are non-zero.
void mix_backward_X(const float* P, const float* dout, float* dX, int64_t j0, int64_t j1, const MixSizes& s,
                    bool accumulate) {
  const int64_t first = s.lower ? j0 + 1 : 0, K = s.rows - first, count = (j1 - j0) * s.bd;
  if (K <= 0) {
    if (!accumulate) std::memset(dX + j0 * s.bd, 0, size_t(count) * sizeof(float));
    return;
  }
  blas::sgemm(true, false, j1 - j0, s.bd, K, 1.f, P + first * s.n + j0, s.n, dout + first * s.bd, s.bd,
              accumulate ? 1.f : 0.f, dX + j0 * s.bd, s.bd);
}

}  // namespace eformer::kernels::sinkhorn_mix

namespace eformer::kernels {
namespace {

using namespace sinkhorn_mix;

// sorted_then_local and sorted_then_own: local undefined means the blocks themselves.
Tensor mix(const Tensor& P, const Tensor& blocks, const Tensor& local_or_none, int64_t b,
           bool strictly_lower) {
  const bool own = !local_or_none.defined();
  const char* op = own ? "sorted_then_own" : "sorted_then_local";
  const Tensor& local = own ? blocks : local_or_none;
  EF_CHECK(P.dim() == 4 && blocks.dim() == 4 && local.dim() == 4, ShapeError, op, ": P ", P.describe(),
           ", blocks ", blocks.describe(), ", local ", local.describe(), "; expected 4-D tensors");
  const int64_t B = P.size(0), H = P.size(1), rows = P.size(2), n = P.size(3), d = local.size(3);
  EF_CHECK(b > 0 && blocks.shape() == (Shape{B, H, n * b, d}) && local.size(0) == B && local.size(1) == H,
           ShapeError, op, ": P ", P.describe(), ", blocks ", blocks.describe(), ", local ", local.describe(),
           " do not fit block ", b, "; expected blocks [B, H, n b, d] and local [B, H, N, d]");
  const MixSizes s{B * H, rows, n, b * d, local.size(2) * d, strictly_lower};
  const Tensor Pc = P.contiguous_data(), Xc = blocks.contiguous_data(), Lc = local.contiguous_data();
  const int64_t S = rows * b, out_head = S * d + s.local, chunk = row_chunk(rows, s),
                per_head = chunks(rows, chunk);
  Tensor out = Tensor::empty({B, H, S + local.size(2), d});
  const float *pp = Pc.data<float>(), *px = Xc.data<float>(), *pl = Lc.data<float>();
  float* po = out.data<float>();
  for_each_item(s.BH * per_head, 0, [&](int64_t item, float*) {
    const int64_t bh = item / per_head, r0 = (item % per_head) * chunk, r1 = std::min(rows, r0 + chunk);
    mix_forward(pp + bh * rows * n, px + bh * n * s.bd, po + bh * out_head, r0, r1, s);
    if (r0 == 0) std::memcpy(po + bh * out_head + S * d, pl + bh * s.local, size_t(s.local) * sizeof(float));
  });
  const std::vector<Tensor> inputs =
      own ? std::vector<Tensor>{P, blocks} : std::vector<Tensor>{P, blocks, local};
  return autograd::record(op, out, inputs, [Pc, Xc, s, S, d, out_head, own](const Tensor& g) {
    const Tensor gc = g.contiguous_data();
    const int64_t rows = s.rows, n = s.n, N = s.local / d;
    Tensor dP = Tensor::empty(Pc.shape()), dX = Tensor::empty(Xc.shape());
    Tensor dlocal = own ? Tensor() : Tensor::empty({Pc.size(0), Pc.size(1), N, d});
    const float *pg = gc.data<float>(), *pp = Pc.data<float>(), *px = Xc.data<float>();
    const int64_t p_chunk = row_chunk(rows, s), x_chunk = row_chunk(n, s);
    const int64_t p_chunks = chunks(rows, p_chunk), x_chunks = chunks(n, x_chunk);
    for_each_item(s.BH * (p_chunks + x_chunks), 0, [&](int64_t item, float*) {
      const int64_t bh = item / (p_chunks + x_chunks), c = item % (p_chunks + x_chunks);
      const float* gh = pg + bh * out_head;
      if (c < p_chunks) {
        const int64_t r0 = c * p_chunk;
        mix_backward_P(gh, px + bh * n * s.bd, dP.data<float>() + bh * rows * n, r0,
                       std::min(rows, r0 + p_chunk), s, false);
        if (c == 0 && !own)
          std::memcpy(dlocal.data<float>() + bh * s.local, gh + S * d, size_t(s.local) * sizeof(float));
      } else {
        const int64_t j0 = (c - p_chunks) * x_chunk, j1 = std::min(n, j0 + x_chunk);
        float* dx = dX.data<float>() + bh * n * s.bd;
        if (own)  // the local part of dOut is the blocks' own gradient: the GEMM adds P^T dOut to it
          std::memcpy(dx + j0 * s.bd, gh + S * d + j0 * s.bd, size_t((j1 - j0) * s.bd) * sizeof(float));
        mix_backward_X(pp + bh * rows * n, gh, dx, j0, j1, s, own);
      }
    });
    if (own) return std::vector<Tensor>{dP, dX};
    return std::vector<Tensor>{dP, dX, dlocal};
  });
}

}  // namespace

Tensor sorted_then_local(const Tensor& P, const Tensor& blocks, const Tensor& local, int64_t b,
                         bool strictly_lower) {
  EF_CHECK(local.defined(), ValueError, "sorted_then_local: local is undefined; use sorted_then_own");
  return mix(P, blocks, local, b, strictly_lower);
}

Tensor sorted_then_own(const Tensor& P, const Tensor& blocks, int64_t b, bool strictly_lower) {
  return mix(P, blocks, Tensor(), b, strictly_lower);
}

}  // namespace eformer::kernels
