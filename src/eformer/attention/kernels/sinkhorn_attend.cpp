// Sinkhorn attention's softmax for the common case (kernels/sinkhorn.h, mixed_block_attention,
// which also mixes the sorted blocks, so that they never sit in a copy beside the
// local keys, and the mixing's backward adds to the local gradients in place): query
// block r attends exactly 2 b keys, its sorted block and its own block, so one work item per
// (batch, head, block) computes the scores [b, 2 b], an exact softmax over them and the output. Where a
// gradient will be needed the probabilities are kept ([B H n, b, wp] floats: N 2 b per head, as many as
// the keys [2 N, d] where b = d): the backward then starts from them, skipping the scores' GEMM, the
// exponentials and the keys' transpose, and writes the gradients of block r's keys and values, which no
// other query block reads.
// The products are the register-blocked tile GEMMs (tile_gemm.h) on the calling thread: an item's
// GEMMs are [b, d] x [d, 2 b] and smaller, where a oneDNN call costs about as much in dispatch,
// packing and signal masking as in arithmetic. The item's two key (value) blocks are copied
// transposed side by side into scratch (by 16 x 16 register tiles where b and d allow, transpose16.h),
// [d, wp] with wp = 2 b rounded up to whole vectors, so that the scores (and dP) are one GEMM each.
#include <algorithm>
#include <functional>
#include <initializer_list>
#include <limits>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/attention/kernels/sinkhorn_mix.h"
#include "eformer/attention/kernels/sinkhorn_sort.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/attention/kernels/transpose16.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"

namespace eformer::kernels {
namespace {

struct AttendSizes {
  int64_t BH = 0, N = 0, n = 0, b = 0, d = 0;
  int64_t wp = 0;       // the score rows' stride: 2 b rounded up to whole vectors
  int64_t kv_head = 0;  // floats per head of the key (value) operands: 2 N d concatenated, N d split
  float scale = 1;
  bool causal = false;
};

// The operands by their bases: the sorted and the local keys (values) either in one [B, H, 2 N, d] tensor
// (local = sorted + N d, as sorted_then_local writes them) or in two [B, H, N, d] tensors.
struct Operands {
  const float *q, *k_sorted, *k_local, *v_sorted, *v_local;
};
struct Gradients {
  float *dq, *dk_sorted, *dk_local, *dv_sorted, *dv_local;
};

// Float offsets of item (bh, r): its queries (or output rows) in q, its key (value) block from either base.
struct BlockRows {
  int64_t q = 0, kv = 0;
};
BlockRows rows_of(int64_t bh, int64_t r, const AttendSizes& s) {
  return {(bh * s.N + r * s.b) * s.d, bh * s.kv_head + r * s.b * s.d};
}

// C[M, N] (+)= alpha A B with A(m, k) = A[m a_rs + k a_cs] (one of the strides 1) and B [K, N] row-major:
// the tile GEMM where N is whole vectors (always wp; d when a multiple of the vector width), oneDNN
// otherwise.
void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  if (N % tile::kWidth == 0) return tile::gemm(M, N, K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
  const bool trans_a = a_cs != 1;
  blas::sgemm(trans_a, false, M, N, K, alpha, A, trans_a ? a_cs : a_rs, B, ldb, accumulate ? 1.f : 0.f, C,
              ldc);
}

// xt [d, wp] = [sorted block; local block]^T, columns 2 b.. wp zero.
void transposed_pair(const float* sorted, const float* local, float* xt, const AttendSizes& s) {
  const int64_t b = s.b, d = s.d, wp = s.wp;
  if (kTranspose16 && b % 16 == 0 && d % 16 == 0 && wp == 2 * b) {  // by 16 x 16 tiles in registers
    for (int64_t t = 0; t < b; t += 16)
      for (int64_t c = 0; c < d; c += 16) {
        transpose16(sorted + t * d + c, d, xt + c * wp + t, wp);
        transpose16(local + t * d + c, d, xt + c * wp + b + t, wp);
      }
    return;
  }
  for (int64_t c = 0; c < d; ++c) {  // the 2 b rows stay in L1; the writes are contiguous
    float* out = xt + c * wp;
    for (int64_t t = 0; t < b; ++t) out[t] = sorted[t * d + c];
    for (int64_t t = 0; t < b; ++t) out[b + t] = local[t * d + c];
    std::fill(out + 2 * b, out + wp, 0.f);
  }
}

// Scores [b, wp] = scale q [sorted; local]^T (kt: the keys transposed_pair wrote), -inf where not
// attended (causal: the local block's later keys, and block 0's sorted block, which mixes no earlier
// block); columns 2 b.. wp are never read.
void block_scores(const float* q, const float* kt, int64_t r, float* sc, const AttendSizes& s) {
  const int64_t b = s.b, wp = s.wp;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  small_gemm(b, wp, s.d, q, s.d, 1, kt, wp, sc, wp, s.scale, false);
  if (!s.causal) return;
  for (int64_t i = 0; i < b; ++i) {
    if (r == 0) std::fill(sc + i * wp, sc + i * wp + b, kNegInf);
    std::fill(sc + i * wp + b + i + 1, sc + i * wp + 2 * b, kNegInf);
  }
}

// out [B, H, N, d]; probs [B H n, b, wp] (null: not kept) the softmax of every block.
void attend_forward(const Operands& x, float* out, float* probs, const AttendSizes& s) {
  const int64_t b = s.b, d = s.d, wp = s.wp;
  for_each_item(s.BH * s.n, b * wp + d * wp, [&](int64_t item, float* scratch) {
    const int64_t r = item % s.n;
    const BlockRows at = rows_of(item / s.n, r, s);
    float *sc = probs ? probs + item * b * wp : scratch, *kt = scratch + b * wp;
    transposed_pair(x.k_sorted + at.kv, x.k_local + at.kv, kt, s);
    block_scores(x.q + at.q, kt, r, sc, s);
    for (int64_t i = 0; i < b; ++i) {  // exact softmax over the row's 2 b keys (at least its own key)
      float* row = sc + i * wp;
      const float m = attention::OnlineSoftmax::max_of(row, 2 * b);
      const float sum = attention::OnlineSoftmax::exp_in_place(row, 2 * b, m);  // -inf (not attended): 0
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < 2 * b; ++j) row[j] *= inv;
    }
    small_gemm(b, d, b, sc, wp, 1, x.v_sorted + at.kv, d, out + at.q, d, 1.f, false);
    small_gemm(b, d, b, sc + b, wp, 1, x.v_local + at.kv, d, out + at.q, d, 1.f, true);
  });
}

// Every gradient from dOut (go) and the kept probabilities; each item writes only its own rows of each
// gradient.
void attend_backward(const Operands& x, const float* go, const float* probs, const Gradients& g,
                     const AttendSizes& s) {
  const int64_t b = s.b, d = s.d, wp = s.wp;
  for_each_item(s.BH * s.n, b * wp + d * wp, [&](int64_t item, float* scratch) {
    const BlockRows at = rows_of(item / s.n, item % s.n, s);
    const float* p = probs + item * b * wp;
    float *dp = scratch, *xt = dp + b * wp;
    const float* gor = go + at.q;
    // dV = P^T dO (per block of keys); dP = dO V^T; dS = P (dP - D); dQ = scale dS K; dK = scale dS^T Q.
    small_gemm(b, d, b, p, 1, wp, gor, d, g.dv_sorted + at.kv, d, 1.f, false);
    small_gemm(b, d, b, p + b, 1, wp, gor, d, g.dv_local + at.kv, d, 1.f, false);
    transposed_pair(x.v_sorted + at.kv, x.v_local + at.kv, xt, s);
    small_gemm(b, wp, d, gor, d, 1, xt, wp, dp, wp, 1.f, false);
    for (int64_t i = 0; i < b; ++i) {
      // D_i = sum_j P_ij dP_ij, the softmax's backward (equal to dO_i . O_i, which would read the output)
      float* dpr = dp + i * wp;
      const float* pr = p + i * wp;
      float delta = 0;
#pragma omp simd reduction(+ : delta)
      for (int64_t j = 0; j < 2 * b; ++j) delta += pr[j] * dpr[j];
#pragma omp simd
      for (int64_t j = 0; j < 2 * b; ++j) dpr[j] = pr[j] * (dpr[j] - delta);
    }
    small_gemm(b, d, b, dp, wp, 1, x.k_sorted + at.kv, d, g.dq + at.q, d, s.scale, false);
    small_gemm(b, d, b, dp + b, wp, 1, x.k_local + at.kv, d, g.dq + at.q, d, s.scale, true);
    small_gemm(b, d, b, dp, 1, wp, x.q + at.q, d, g.dk_sorted + at.kv, d, s.scale, false);
    small_gemm(b, d, b, dp + b, 1, wp, x.q + at.q, d, g.dk_local + at.kv, d, s.scale, false);
  });
}

bool needs_probabilities(std::initializer_list<const Tensor*> inputs) {
  if (!autograd::is_grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (requires_grad(*t)) return true;
  return false;
}

// The mixing and the attention of mixed_block_attention, forward and backward, without a graph node
// (sinkhorn_attention records them beside the permutation's).
struct MixedState {
  AttendSizes s;
  sinkhorn_mix::MixSizes m;
  Tensor q, k, v, P, k_sorted, v_sorted, out, probs;  // contiguous; out detached; probs [B H n, b, wp]
};

Operands operands(const MixedState& st) {
  return Operands{st.q.data<float>(), st.k_sorted.data<float>(), st.k.data<float>(),
                  st.v_sorted.data<float>(), st.v.data<float>()};
}

// The forward's state with its outputs allocated, shapes checked; P (if defined) set.
MixedState mixed_state(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& P, int64_t b,
                       float scale, bool causal, bool keep_probabilities) {
  const char* op = "mixed_block_attention";
  EF_CHECK(q.dim() == 4 && b > 0 && q.size(2) % b == 0, ShapeError, op, ": q ", q.describe(),
           " must be [B, H, N, d] with N a multiple of the block ", b);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), n = N / b;
  EF_CHECK(
      k.shape() == q.shape() && v.shape() == q.shape() && (!P.defined() || P.shape() == (Shape{B, H, n, n})),
      ShapeError, op, ": q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(), ", P ", P.describe(),
      "; expected k and v as q and P [", B, ", ", H, ", ", n, ", ", n, "]");
  const int64_t wp = tile::round_up(2 * b);
  return MixedState{{B * H, N, n, b, d, wp, N * d, scale, causal},
                    {B * H, n, n, b * d, N * d, causal},
                    q.contiguous_data(),
                    k.contiguous_data(),
                    v.contiguous_data(),
                    P.defined() ? P.contiguous_data() : Tensor(),
                    Tensor::empty(q.shape()),
                    Tensor::empty(q.shape()),
                    Tensor::empty(q.shape()),
                    keep_probabilities ? Tensor::empty({B * H * n, b, wp}) : Tensor()};
}

// Sorted blocks [r0, r1) of (batch, head) bh from its P [n, n]: sum_j P_rj K_j and sum_j P_rj V_j.
void mix_sorted_blocks(const MixedState& st, const float* P_bh, int64_t bh, int64_t r0, int64_t r1) {
  const int64_t at = bh * st.s.kv_head;
  sinkhorn_mix::mix_forward(P_bh, st.k.data<float>() + at, st.k_sorted.data<float>() + at, r0, r1, st.m);
  sinkhorn_mix::mix_forward(P_bh, st.v.data<float>() + at, st.v_sorted.data<float>() + at, r0, r1, st.m);
}

// Rows of P (or of the blocks) per mixing work item and the items per head (sinkhorn_mix.h).
struct MixChunks {
  int64_t chunk = 0, per_head = 0;
};
MixChunks mix_chunks(const sinkhorn_mix::MixSizes& m) {
  const int64_t chunk = sinkhorn_mix::row_chunk(m.n, m);
  return {chunk, sinkhorn_mix::chunks(m.n, chunk)};
}

// The sorted blocks (unless the caller mixed them already): whole heads or chunks of rows, the keys and the
// values of a chunk in one item; then the attention.
void mixed_forward(MixedState& st, bool blocks_mixed) {
  const int64_t n = st.m.n;
  const MixChunks mc = mix_chunks(st.m);
  if (!blocks_mixed)
    for_each_item(st.m.BH * mc.per_head, 0, [&](int64_t item, float*) {
      const int64_t bh = item / mc.per_head, r0 = (item % mc.per_head) * mc.chunk;
      mix_sorted_blocks(st, st.P.data<float>() + bh * n * n, bh, r0, std::min(n, r0 + mc.chunk));
    });
  attend_forward(operands(st), st.out.data<float>(), st.probs.defined() ? st.probs.data<float>() : nullptr,
                 st.s);
  st.out = st.out.detach();
}

struct MixedGradients {
  Tensor q, k, v, P, k_sorted, v_sorted;  // k_sorted, v_sorted: dK_sorted, dV_sorted (the mixing's dOut)
};

// dK += P^T dK_sorted and dV += P^T dV_sorted for (batch, head) bh, block rows [j0, j1).
void mix_backward_blocks(const MixedState& st, const MixedGradients& d, int64_t bh, int64_t j0, int64_t j1) {
  const int64_t at = bh * st.s.kv_head;
  const float* ph = st.P.data<float>() + bh * st.m.n * st.m.n;
  sinkhorn_mix::mix_backward_X(ph, d.k_sorted.data<float>() + at, d.k.data<float>() + at, j0, j1, st.m, true);
  sinkhorn_mix::mix_backward_X(ph, d.v_sorted.data<float>() + at, d.v.data<float>() + at, j0, j1, st.m, true);
}

// The attention's gradients, then through the mixing dP = dK_sorted K^T + dV_sorted V^T, and (with_blocks)
// dK += P^T dK_sorted (dV likewise) on top of the local gradients the attention wrote.
MixedGradients mixed_backward(const MixedState& st, const Tensor& g, bool with_blocks) {
  const Tensor gc = g.contiguous_data();
  const Shape shape = st.q.shape();
  const AttendSizes& s = st.s;
  const sinkhorn_mix::MixSizes& m = st.m;
  MixedGradients d{Tensor::empty(shape),        Tensor::empty(shape), Tensor::empty(shape),
                   Tensor::empty(st.P.shape()), Tensor::empty(shape), Tensor::empty(shape)};
  attend_backward(operands(st), gc.data<float>(), st.probs.data<float>(),
                  {d.q.data<float>(), d.k_sorted.data<float>(), d.k.data<float>(), d.v_sorted.data<float>(),
                   d.v.data<float>()},
                  s);
  const int64_t n = m.n;
  const MixChunks mc = mix_chunks(m);
  const int64_t kinds = with_blocks ? 2 : 1;  // dP items, then the blocks' items
  for_each_item(m.BH * kinds * mc.per_head, 0, [&](int64_t item, float*) {
    const int64_t bh = item / (kinds * mc.per_head), c = item % (kinds * mc.per_head);
    const int64_t r0 = (c % mc.per_head) * mc.chunk, r1 = std::min(n, r0 + mc.chunk), at = bh * s.kv_head;
    if (c < mc.per_head) {
      float* dph = d.P.data<float>() + bh * n * n;
      sinkhorn_mix::mix_backward_P(d.k_sorted.data<float>() + at, st.k.data<float>() + at, dph, r0, r1, m,
                                   false);
      sinkhorn_mix::mix_backward_P(d.v_sorted.data<float>() + at, st.v.data<float>() + at, dph, r0, r1, m,
                                   true);
    } else {
      mix_backward_blocks(st, d, bh, r0, r1);
    }
  });
  return d;
}

}  // namespace

Tensor mixed_block_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& P, int64_t b,
                             float scale, bool causal) {
  auto st = std::make_shared<MixedState>(
      mixed_state(q, k, v, P, b, scale, causal, needs_probabilities({&q, &k, &v, &P})));
  mixed_forward(*st, false);
  return autograd::record("mixed_block_attention", st->out.detach(), {q, k, v, P}, [st](const Tensor& g) {
    MixedGradients d = mixed_backward(*st, g, true);
    return std::vector<Tensor>{d.q, d.k, d.v, d.P};
  });
}

Tensor sinkhorn_block_attention(const Tensor& q, const Tensor& k, const Tensor& v, const SortNetWeights& net,
                                const Tensor& gumbel, const SinkhornSortSizes& sizes, int64_t b,
                                float scale) {
  using namespace sinkhorn_sort;
  std::vector<Tensor> inputs = {q, k, v, net.w1, net.b1, net.w2, net.b2};
  if (gumbel.defined()) inputs.push_back(gumbel);
  bool keep = autograd::is_grad_enabled() &&
              std::any_of(inputs.begin(), inputs.end(), [](const Tensor& t) { return requires_grad(t); });
  auto mixed = std::make_shared<MixedState>(mixed_state(q, k, v, Tensor(), b, scale, sizes.causal, keep));
  // Where the mixing has one item per head, a head's sorted blocks are mixed in the permutation's item right
  // after its P, while its keys are in cache from the block sums.
  const bool per_head = mix_chunks(mixed->m).per_head == 1;
  auto mix_head = [&](int64_t bh, const float* P_bh) { mix_sorted_blocks(*mixed, P_bh, bh, 0, mixed->m.n); };
  auto sort = std::make_shared<const SortState>(
      sort_forward(k, b, net.w1, net.b1, net.w2, net.b2, gumbel, sizes,
                   per_head ? std::function<void(int64_t, const float*)>(mix_head) : nullptr));
  mixed->P = sort->P;
  mixed_forward(*mixed, per_head);
  return autograd::record(
      "sinkhorn_block_attention", mixed->out.detach(), inputs, [sort, mixed](const Tensor& g) {
        // dP, then the permutation's backward adds the block sums' gradient into dK in place (the SortNet
        // read the block sums of k), then dK += P^T dK_sorted (dV likewise): per head right after its block
        // sums' gradient while its dK is in cache where the mixing has one item per head, else as items of
        // its own.
        MixedGradients d = mixed_backward(*mixed, g, false);
        const sinkhorn_mix::MixSizes& m = mixed->m;
        const MixChunks mc = mix_chunks(m);
        const int64_t H = sort->dims.H, n = m.n;
        auto after_head = [&](int64_t h) {
          for (int64_t bh = h; bh < m.BH; bh += H) mix_backward_blocks(*mixed, d, bh, 0, n);
        };
        SortGradients s =
            sort_backward(*sort, d.P, true, d.k.data<float>(), true,
                          mc.per_head == 1 ? std::function<void(int64_t)>(after_head) : nullptr);
        if (mc.per_head > 1)
          for_each_item(m.BH * mc.per_head, 0, [&](int64_t item, float*) {
            const int64_t bh = item / mc.per_head, j0 = (item % mc.per_head) * mc.chunk;
            mix_backward_blocks(*mixed, d, bh, j0, std::min(n, j0 + mc.chunk));
          });
        std::vector<Tensor> grads = {d.q, d.k, d.v, s.w1, s.b1, s.w2, s.b2};
        if (s.gumbel.defined()) grads.push_back(s.gumbel);
        return grads;
      });
}

}  // namespace eformer::kernels
