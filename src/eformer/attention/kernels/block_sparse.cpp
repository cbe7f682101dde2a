#include "eformer/attention/kernels/block_sparse.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_dropout.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"

namespace eformer::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The sizes and shared operands of one call.
struct Problem {
  int64_t B, H, N, M, d, dp, Mp, b, bp,
      offset;  // N, M: the kernel's rows and keys; b: block; bp, dp, Mp: padded
  float scale;
  bool causal;
  const BlockSparseLayout& L;
  const bool* key_mask;
  const FlashDropout* dropout;       // null: none
  const ScoreBiasTable* bias;        // null: none
  const PositionScores* position;    // null: none
  int64_t gp, Rp;                    // position: a tile's distances padded; r^T's columns padded
  const float* rt = nullptr;         // position: r^T [H, d, Rp], columns M.. zero
  std::vector<char> key_block_real;  // [B, nk]: does the key block hold a real key?

  Problem(int64_t B_, int64_t H_, int64_t d_, float scale_, bool causal_, const BlockSparseLayout& layout,
          const bool* km, const FlashDropout* dr, const ScoreBiasTable* bias_,
          const PositionScores* position_ = nullptr)
      : B(B_),
        H(H_),
        N(layout.rows),
        M(layout.keys),
        d(d_),
        dp(tile::round_up(d_)),
        // A score tile reads round_up(cols) columns of K^T from column j0 = kb b; with a block that is
        // not a multiple of the vector width the last tile's read reaches past round_up(M): pad for it.
        Mp(tile::round_up(layout.keys + tile::kWidth - 1)),
        b(layout.block),
        bp(tile::round_up(layout.block)),
        offset(layout.keys - layout.rows),
        scale(scale_),
        causal(causal_),
        L(layout),
        key_mask(km),
        dropout(dr && dr->p > 0.0f ? dr : nullptr),
        bias(bias_),
        position(position_),
        gp(tile::round_up(2 * layout.block - 1)),
        // A tile's distances start at row lo <= M - 1 of r and span round_up(rows + cols - 1) <= gp.
        Rp(tile::round_up(layout.keys + gp)),
        key_block_real(size_t(B_ * layout.nk), 1) {
    EF_CHECK(!position_ || (causal_ && !layout.reordered() && layout.masks.empty() &&
                            layout.pairs() == layout.heads * layout.nq * layout.nk),
             ValueError, "block_sparse_attention: the position score bias needs causal attention over a layout "
             "in q/k order whose every block is full");
    if (!km) return;
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t kb = 0; kb < L.nk; ++kb) {
        char any = 0;
        for (int64_t j = kb * b; j < std::min(M, (kb + 1) * b) && !any; ++j) any = km[bb * M + j];
        key_block_real[size_t(bb * L.nk + kb)] = any;
      }
  }
  int64_t layout_head(int64_t bh) const { return (bh % H) % L.heads; }
  // Is the pair (query block at i0, key block kb) of batch row bb worth computing?
  bool live(int64_t bb, int64_t i0, int64_t rows, int64_t kb) const {
    return key_block_real[size_t(bb * L.nk + kb)] && !(causal && kb * b > i0 + rows - 1 + offset);
  }
  // The first row of r a tile's distances need: p = N - 1 - i + j at its last row and first key.
  int64_t position_row(int64_t i0, int64_t rows, int64_t j0) const { return N - i0 - rows + j0; }
  // Multiplies the tile x [rows, bp] (kernel rows i0.., keys j0..) of head bh by the dropout's Z.
  void drop(float* x, int64_t bh, int64_t i0, int64_t rows, int64_t j0, int64_t cols) const {
    if (!L.reordered()) return apply_dropout(x, bp, rows, cols, (bh * N + i0) * M + j0, M, *dropout);
    apply_dropout_indexed(x, bp, rows, cols, L.query_index.empty() ? nullptr : L.query_index.data() + i0, i0,
                          L.key_index.empty() ? nullptr : L.key_index.data() + j0, j0, bh, L.N, L.M,
                          *dropout);
  }
};

// s [rows, bp] = scale Q_i K_j^T (columns up to round_up(cols)) plus the bias of head bh % H, then
// -inf wherever the pair's element mask, the key mask or the causal rule forbids (query i0 + r,
// key j0 + c). g [rows, gp]: scratch of the position term.
void masked_scores(const Problem& P, float* s, float* g, int64_t bh, const float* Q, const float* KT, int64_t i0,
                   int64_t rows, int64_t j0, int64_t cols, const uint8_t* mask, const bool* km) {
  const int64_t h = bh % P.H;
  tile::gemm(rows, tile::round_up(cols), P.d, Q, P.d, 1, KT + j0, P.Mp, s, P.bp, P.scale, false);
  if (P.position) {
    // G = scale QW_i R_lo..^T over the tile's distances; row r, key c reads G[r, rows - 1 - r + c]
    // (the relative shift of Dai et al., appendix B, as an index).
    const int64_t lo = P.position_row(i0, rows, j0);
    tile::gemm(rows, tile::round_up(rows + cols - 1), P.d, P.position->qw + (bh * P.N + i0) * P.d, P.d, 1,
               P.rt + h * P.d * P.Rp + lo, P.Rp, g, P.gp, P.scale, false);
    for (int64_t r = 0; r < rows; ++r) {
      const float* gr = g + r * P.gp + rows - 1 - r;
      float* sr = s + r * P.bp;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) sr[c] += gr[c];
    }
  }
  if (P.bias) {
    const float* table = P.bias->table + h * P.bias->labels.count();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) s[r * P.bp + c] += table[P.bias->labels(i0 + r, j0 + c)];
  }
  if (mask)
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* mr = mask + r * P.b;
      float* sr = s + r * P.bp;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) sr[c] = mr[c] ? sr[c] : kNegInf;
    }
  if (km)
    for (int64_t c = 0; c < cols; ++c)
      if (!km[j0 + c])
        for (int64_t r = 0; r < rows; ++r) s[r * P.bp + c] = kNegInf;
  if (P.causal && j0 + cols - 1 > i0 + P.offset)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = std::max<int64_t>(0, i0 + r + P.offset + 1 - j0); c < cols; ++c)
        s[r * P.bp + c] = kNegInf;
}

// The backward of one pair: p = P = exp(S - L) and ds = dS = P o (dP o Z - D) with dP = dO_i V_j^T;
// with dropout z = P o Z (for dV), else dV uses p.
void pair_gradients(const Problem& P, float* p, float* ds, float* z, float* g, int64_t bh, const float* Q,
                    const float* dO, const float* KT, const float* VT, const float* Lse, const float* Drow,
                    int64_t i0, int64_t rows, int64_t j0, int64_t cols, const uint8_t* mask, const bool* km) {
  masked_scores(P, p, g, bh, Q, KT, i0, rows, j0, cols, mask, km);
  for (int64_t r = 0; r < rows; ++r) {
    const float l = Lse[r];
    float* pr = p + r * P.bp;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) pr[c] = fast_exp(pr[c] - l);
  }
  tile::gemm(rows, tile::round_up(cols), P.d, dO, P.d, 1, VT + j0, P.Mp, ds, P.bp, 1.0f, false);
  if (!P.dropout) {
    for (int64_t r = 0; r < rows; ++r) {
      const float Di = Drow[r];
      const float* pr = p + r * P.bp;
      float* dsr = ds + r * P.bp;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) dsr[c] = pr[c] * (dsr[c] - Di);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) std::fill(z + r * P.bp, z + r * P.bp + cols, 1.0f);
  P.drop(z, bh, i0, rows, j0, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const float Di = Drow[r];
    const float* pr = p + r * P.bp;
    float* dsr = ds + r * P.bp;
    float* zr = z + r * P.bp;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      dsr[c] = pr[c] * (dsr[c] * zr[c] - Di);
      zr[c] *= pr[c];
    }
  }
}

// The position term's dS along the shift: g [rows, gp] = dG with dG[r, rows - 1 - r + c] = ds[r, c]
// (0 elsewhere), so that dQW_i += scale dG R_lo.. and dR_lo.. += scale dG^T QW_i are two GEMMs.
// Returns how many rows of r the tile's distances reach (at most rows + cols - 1; the rest are masked).
int64_t shifted_position_grad(const Problem& P, float* g, const float* ds, int64_t i0, int64_t rows, int64_t j0,
                              int64_t cols) {
  std::memset(g, 0, size_t(rows * P.gp) * sizeof(float));
  for (int64_t r = 0; r < rows; ++r) {
    float* gr = g + r * P.gp + rows - 1 - r;
    const float* dsr = ds + r * P.bp;
    for (int64_t c = 0; c < cols; ++c) gr[c] = dsr[c];
  }
  return std::min(rows + cols - 1, P.M - P.position_row(i0, rows, j0));
}

// The backward's partials of one gradient (dQ, dQW) [rows, d], one per key-block group: group 0
// accumulates in the output itself, groups 1 .. G - 1 in scratch [G - 1, rows, d]; sum() then adds
// them to the output in group order.
struct GroupPartials {
  float* out;
  int64_t G, rows, d;
  ScratchBuffer parts;
  GroupPartials(float* out_, int64_t G_, int64_t rows_, int64_t d_)
      : out(out_), G(G_), rows(rows_), d(d_), parts(std::max<int64_t>(0, G_ - 1) * rows_ * d_) {}
  float* group(int64_t g) const { return g == 0 ? out : parts.data + (g - 1) * rows * d; }
  void sum() const {
    if (G <= 1) return;
    parallel::parallel_for(rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* o = out + r * d;
        for (int64_t g = 1; g < G; ++g) {
          const float* x = group(g) + r * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) o[c] += x[c];
        }
      }
    });
  }
};

// y [rows, d] (row stride d) += alpha A B with the product [rows, dp] (tile::gemm's operands): in
// place when d = dp, else through the tile t [rows, dp].
void gemm_into_rows(int64_t rows, int64_t d, int64_t dp, int64_t K, const float* A, int64_t a_rs, int64_t a_cs,
                    const float* Bm, int64_t ldb, float* y, float alpha, float* t) {
  if (d == dp) return tile::gemm(rows, dp, K, A, a_rs, a_cs, Bm, ldb, y, d, alpha, true);
  tile::gemm(rows, dp, K, A, a_rs, a_cs, Bm, ldb, t, dp, alpha, false);
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * d;
    const float* tr = t + r * dp;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) yr[c] += tr[c];
  }
}

}  // namespace

int64_t block_sparse_block() {
  static const int64_t block = [] {
    const char* env = std::getenv("EFORMER_SPARSE_BLOCK");
    if (!env || !*env) return kBlockSparseBlock;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    EF_CHECK(*end == '\0' && v >= 1, ValueError, "EFORMER_SPARSE_BLOCK = '", env,
             "'; expected an integer >= 1");
    return int64_t(v);
  }();
  return block;
}

void block_sparse_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask,
                                    float* out, float* lse, int64_t B, int64_t H, int64_t d, float scale,
                                    bool causal, const BlockSparseLayout& layout,
                                    const FlashDropout* dropout, const ScoreBiasTable* bias,
                                    const PositionScores* position) {
  Problem P(B, H, d, scale, causal, layout, key_mask, dropout, bias, position);
  const BlockSparseLayout& L = layout;
  const int64_t nq = L.nq, N = P.N, M = P.M, dp = P.dp, b = P.b, bp = P.bp;
  // K^T [BH, d, Mp] (the B operand of S = Q K^T) and V with rows padded to dp (of O += P V).
  ScratchBuffer kt = transposed_padded(k, B * H, M, d, P.Mp);
  ScratchBuffer vpad = rows_padded(v, B * H * M, d, dp);
  const float* VP = vpad.data ? vpad.data : v;
  ScratchBuffer rt = position ? transposed_padded(position->r, H, M, d, P.Rp) : ScratchBuffer();
  P.rt = rt.data;
  const int64_t gsize = position ? b * P.gp : 0;
  // Items in reverse query-block order: long causal rows first, so the dynamic schedule balances.
  for_each_item(B * H * nq, b * bp + b * dp + gsize, [&](int64_t item, float* scratch) {
    float* s = scratch;           // S, then P   [b, bp]
    float* O = scratch + b * bp;  // the output rows, unnormalized   [b, dp]
    float* g = O + b * dp;        // the position term   [b, gp]
    const int64_t bh = item / nq, qb = nq - 1 - item % nq, bb = bh / H, lh = P.layout_head(bh);
    const int64_t i0 = qb * b, rows = std::min(b, N - i0);
    const float* Q = q + (bh * N + i0) * d;
    const float* KT = kt.data + bh * d * P.Mp;
    const float* V = VP + bh * M * dp;
    const bool* km = key_mask ? key_mask + bb * M : nullptr;
    std::memset(O, 0, size_t(rows * dp) * sizeof(float));
    std::vector<attention::OnlineSoftmax> state(static_cast<size_t>(rows));
    for (int64_t p = L.row_begin(lh, qb); p < L.row_end(lh, qb); ++p) {
      const int64_t kb = L.row_key(p), j0 = kb * b, cols = std::min(b, M - j0);
      if (!P.live(bb, i0, rows, kb)) continue;
      masked_scores(P, s, g, bh, Q, KT, i0, rows, j0, cols, L.mask(L.row_mask_id(p)), km);
      for (int64_t r = 0; r < rows; ++r) {
        const float rescale = state[size_t(r)].update(s + r * bp, cols);
        if (rescale != 1.0f) {
          float* o = O + r * dp;
#pragma omp simd
          for (int64_t c = 0; c < dp; ++c) o[c] *= rescale;
        }
      }
      // Dropout after the statistics: m, l and L stay those of the undropped P (as flash).
      if (P.dropout) P.drop(s, bh, i0, rows, j0, cols);
      tile::gemm(rows, dp, cols, s, bp, 1, V + j0 * dp, dp, O, dp, 1.0f, true);  // O_i += (P o Z) V_j
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = state[size_t(r)].inverse_sum();
      float* o = out + (bh * N + i0 + r) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = O[r * dp + c] * inv;
      lse[bh * N + i0 + r] = state[size_t(r)].log_sum_exp();
    }
  });
}

void block_sparse_attention_backward(const float* q, const float* k, const float* v, const bool* key_mask,
                                     const float* out, const float* lse, const float* dout, float* dq,
                                     float* dk, float* dv, int64_t B, int64_t H, int64_t d, float scale,
                                     bool causal, const BlockSparseLayout& layout,
                                     const FlashDropout* dropout, const ScoreBiasTable* bias, float* dbias,
                                     const PositionScores* position, float* dqw, float* dr) {
  Problem P(B, H, d, scale, causal, layout, key_mask, dropout, bias, position);
  const BlockSparseLayout& L = layout;
  const int64_t nq = L.nq, nk = L.nk, N = P.N, M = P.M, dp = P.dp, b = P.b, bp = P.bp;
  // D_i = sum_c dO[i, c] O[i, c]   [BH, N]
  ScratchBuffer Dbuf(B * H * N);
  float* D = Dbuf.data;
  parallel::parallel_for(B * H * N, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < d; ++c) acc += dout[i * d + c] * out[i * d + c];
      D[i] = acc;
    }
  });
  // B operands: K^T and V^T [BH, d, Mp] (of S and dP), and Q, K, dO with rows padded to dp.
  ScratchBuffer kt = transposed_padded(k, B * H, M, d, P.Mp), vt = transposed_padded(v, B * H, M, d, P.Mp);
  ScratchBuffer qpad = rows_padded(q, B * H * N, d, dp), kpad = rows_padded(k, B * H * M, d, dp),
                dopad = rows_padded(dout, B * H * N, d, dp);
  const float* QP = qpad.data ? qpad.data : q;
  const float* KP = kpad.data ? kpad.data : k;
  const float* dOP = dopad.data ? dopad.data : dout;
  const int64_t tiles = (P.dropout ? 3 : 2) * b * bp;
  // The position term: r^T (of its scores), R and QW with rows padded to dp (of dQW and dR).
  ScratchBuffer rt = position ? transposed_padded(position->r, H, M, d, P.Rp) : ScratchBuffer();
  ScratchBuffer rpad = position ? rows_padded(position->r, H * M, d, dp) : ScratchBuffer(),
                qwpad = position ? rows_padded(position->qw, B * H * N, d, dp) : ScratchBuffer();
  P.rt = rt.data;
  const float* RP = rpad.data ? rpad.data : (position ? position->r : nullptr);
  const float* QWP = qwpad.data ? qwpad.data : (position ? position->qw : nullptr);
  const int64_t gsize = position ? b * P.gp : 0;
  // The bias gradient per (batch, head, key block) and label, summed over them in order below.
  const int64_t labels = bias ? bias->labels.count() : 0;
  ScratchBuffer dbias_parts(bias ? B * H * nk * labels : 0);

  // One pass by (batch, head, key-block group) (FlashAttention-2's backward, Dao 2023, Alg. 2, with
  // its dQ atomics replaced by partials): key block kb belongs to group kb mod G; an item computes
  // dV_j = sum_i (P o Z)^T dO_i and dK_j = scale sum_i dS^T Q_i for each of its key blocks and adds
  // scale dS K_j into its group's own dQ (and the position term's dQW = scale dG R) partial;
  // the partials are then summed in group order. 5 tile products per pair; G depends on B H and nk
  // only, so every element is summed in one order whatever the thread count.
  // The position term runs in one group: its dQW partials would double the memory of dQ's.
  const int64_t G = position ? 1 : backward_groups(B * H, nk), rows_all = B * H * N;
  const GroupPartials dq_parts(dq, G, rows_all, d), dqw_parts(dqw, position ? G : 0, rows_all, d);
  for_each_item(B * H * G, tiles + 3 * b * dp + gsize, [&](int64_t item, float* scratch) {
    float* p = scratch;
    float* ds = p + b * bp;
    float* z = ds + b * bp;  // dropout only
    float* dK = scratch + tiles;
    float* dV = dK + b * dp;
    float* g = dV + b * dp;  // position only
    const int64_t bh = item / G, group = item % G, bb = bh / H, lh = P.layout_head(bh);
    const bool* km = key_mask ? key_mask + bb * M : nullptr;
    float* t = g + gsize;  // a dQ tile when d < dp   [b, dp]
    float* dQ = dq_parts.group(group) + bh * N * d;
    float* dQW = position ? dqw_parts.group(group) + bh * N * d : nullptr;
    std::memset(dQ, 0, size_t(N * d) * sizeof(float));
    if (dQW) std::memset(dQW, 0, size_t(N * d) * sizeof(float));
    for (int64_t kb = group; kb < nk; kb += G) {
      const int64_t j0 = kb * b, cols = std::min(b, M - j0);
      std::memset(dK, 0, size_t(cols * dp) * sizeof(float));
      std::memset(dV, 0, size_t(cols * dp) * sizeof(float));
      float* db = bias ? dbias_parts.data + (bh * nk + kb) * labels : nullptr;
      if (db) std::fill(db, db + labels, 0.0f);
      for (int64_t e = L.col_begin(lh, kb); e < L.col_end(lh, kb); ++e) {
        const int64_t qb = L.col_query(e), i0 = qb * b, rows = std::min(b, N - i0);
        if (!P.live(bb, i0, rows, kb)) continue;
        pair_gradients(P, p, ds, z, g, bh, q + (bh * N + i0) * d, dout + (bh * N + i0) * d,
                       kt.data + bh * d * P.Mp, vt.data + bh * d * P.Mp, lse + bh * N + i0, D + bh * N + i0, i0,
                       rows, j0, cols, L.mask(L.col_mask_id(e)), km);
        tile::gemm(cols, dp, rows, P.dropout ? z : p, 1, bp, dOP + (bh * N + i0) * dp, dp, dV, dp, 1.0f, true);
        tile::gemm(cols, dp, rows, ds, 1, bp, QP + (bh * N + i0) * dp, dp, dK, dp, scale, true);
        gemm_into_rows(rows, d, dp, cols, ds, bp, 1, KP + (bh * M + j0) * dp, dp, dQ + i0 * d, scale, t);
        if (db)  // d(score) / d(bias) = 1: dS summed per label
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) db[bias->labels(i0 + r, j0 + c)] += ds[r * bp + c];
        if (dQW) {
          const int64_t span = shifted_position_grad(P, g, ds, i0, rows, j0, cols);
          gemm_into_rows(rows, d, dp, span, g, P.gp, 1, RP + ((bh % H) * M + P.position_row(i0, rows, j0)) * dp, dp,
                         dQW + i0 * d, scale, t);
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        std::memcpy(dk + (bh * M + j0 + c) * d, dK + c * dp, size_t(d) * sizeof(float));
        std::memcpy(dv + (bh * M + j0 + c) * d, dV + c * dp, size_t(d) * sizeof(float));
      }
    }
  });
  dq_parts.sum();
  if (position) dqw_parts.sum();

  if (dbias) {
    std::fill(dbias, dbias + H * labels, 0.0f);
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t kb = 0; kb < nk; ++kb) {
          const float* part = dbias_parts.data + ((bb * H + h) * nk + kb) * labels;
          for (int64_t l = 0; l < labels; ++l) dbias[h * labels + l] += part[l];
        }
  }
  if (!position) return;

  // Pass 2, by block diagonal kb - qb = delta: dR_p = scale sum_{p(i,j) = p} dS_ij QW_i. Every tile of
  // a diagonal reaches rows lo.. lo + rows + cols - 2 of R within base .. base + 2 b - 2, base =
  // N - b + delta b (a short last query block starts b - rows later); each item sums into its own
  // 2 b rows, and the items are summed per head over (batch, diagonal) in order below.
  const int64_t ndiag = nq + nk - 1, slot = 2 * b * dp;
  ScratchBuffer dr_parts(B * H * ndiag * slot);
  auto diagonal_base = [&](int64_t di) { return N - b + (di - (nq - 1)) * b; };
  for_each_item(B * H * ndiag, tiles + gsize, [&](int64_t item, float* scratch) {
    float* p = scratch;
    float* ds = p + b * bp;
    float* z = ds + b * bp;
    float* g = scratch + tiles;
    const int64_t bh = item / ndiag, di = item % ndiag, bb = bh / H, base = diagonal_base(di);
    const bool* km = key_mask ? key_mask + bb * M : nullptr;
    float* part = dr_parts.data + item * slot;
    std::memset(part, 0, size_t(slot) * sizeof(float));
    for (int64_t qb = std::max<int64_t>(0, nq - 1 - di); qb < nq && qb + di - (nq - 1) < nk; ++qb) {
      const int64_t kb = qb + di - (nq - 1), i0 = qb * b, rows = std::min(b, N - i0), j0 = kb * b,
                    cols = std::min(b, M - j0);
      if (!P.live(bb, i0, rows, kb)) continue;
      pair_gradients(P, p, ds, z, g, bh, q + (bh * N + i0) * d, dout + (bh * N + i0) * d,
                     kt.data + bh * d * P.Mp, vt.data + bh * d * P.Mp, lse + bh * N + i0, D + bh * N + i0, i0,
                     rows, j0, cols, nullptr, km);
      const int64_t span = shifted_position_grad(P, g, ds, i0, rows, j0, cols);
      tile::gemm(span, dp, rows, g, 1, P.gp, QWP + (bh * N + i0) * dp, dp,
                 part + (P.position_row(i0, rows, j0) - base) * dp, dp, scale, true);
    }
  });
  parallel::parallel_for(H, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      float* drh = dr + h * M * d;
      std::fill(drh, drh + M * d, 0.0f);
      for (int64_t bb = 0; bb < B; ++bb)
        for (int64_t di = 0; di < ndiag; ++di) {
          const float* part = dr_parts.data + ((bb * H + h) * ndiag + di) * slot;
          const int64_t base = diagonal_base(di);
          for (int64_t t = std::max<int64_t>(0, -base); t < 2 * b && base + t < M; ++t)
            for (int64_t c = 0; c < d; ++c) drh[(base + t) * d + c] += part[t * dp + c];
        }
    }
  });
}

}  // namespace eformer::kernels

namespace eformer::attention {
namespace {

using Layouts = std::vector<std::shared_ptr<const kernels::BlockSparseLayout>>;

// x [BH, n, w] -> [BH, index.size(), w]: rows x[index[r]] (x itself for an empty index).
Tensor gather_rows(const Tensor& x, int64_t BH, int64_t n, int64_t w, const std::vector<int64_t>& index) {
  if (index.empty()) return x;
  const int64_t m = int64_t(index.size());
  Tensor out = Tensor::empty({BH, m, w});
  const float* src = x.data<float>();
  float* dst = out.data<float>();
  parallel::parallel_for(BH * m, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(dst + r * w, src + ((r / m) * n + index[size_t(r % m)]) * w, size_t(w) * sizeof(float));
  });
  return out;
}

// acc[index[r]] += part[r] over [BH, index.size(), w] (acc [BH, n, w]); race-free: indices are distinct.
void scatter_add_rows(float* acc, const float* part, int64_t BH, int64_t n, int64_t w,
                      const std::vector<int64_t>& index, int64_t rows) {
  parallel::parallel_for(BH * rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t at = index.empty() ? r : (r / rows) * n + index[size_t(r % rows)];
      for (int64_t c = 0; c < w; ++c) acc[at * w + c] += part[r * w + c];
    }
  });
}

// The key mask [B, M] in the layout's key order [B, keys].
Tensor gather_key_mask(const Tensor& km, int64_t B, int64_t M, const std::vector<int64_t>& index) {
  if (!km.defined() || index.empty()) return km;
  Tensor out = Tensor::empty({B, int64_t(index.size())}, DType::Bool);
  for (int64_t b = 0; b < B; ++b)
    for (size_t c = 0; c < index.size(); ++c)
      out.data<bool>()[b * int64_t(index.size()) + int64_t(c)] = km.data<bool>()[b * M + index[c]];
  return out;
}

// The inputs of one part in its kernel order.
struct PartInputs {
  Tensor q, k, v, key_mask;
};
PartInputs part_inputs(const kernels::BlockSparseLayout& L, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& km, const AttentionDims& s) {
  return {gather_rows(q, s.B * s.H, s.N, s.d, L.query_index),
          gather_rows(k, s.B * s.H, s.M, s.d, L.key_index), gather_rows(v, s.B * s.H, s.M, s.d, L.key_index),
          gather_key_mask(km, s.B, s.M, L.key_index)};
}

const bool* mask_ptr(const Tensor& km) { return km.defined() ? km.data<bool>() : nullptr; }

// Dropout reserves the counters of the dense [B, H, N, M] probabilities (as flash and full), so an
// element is dropped here iff full_attention drops it.
kernels::FlashDropout reserve_dropout(float p, const AttentionDims& s) {
  kernels::FlashDropout dr;
  if (p > 0.0f) {
    rng::Generator& gen = rng::default_generator();
    dr.p = p;
    dr.counter = gen.reserve(uint64_t(s.B * s.H * s.N * s.M + 3) / 4);
    dr.seed = gen.state().seed, dr.stream = gen.state().stream;
  }
  return dr;
}

// ValueError / ShapeError unless the layout is built, in q/k order and of q's and k's sizes.
void check_biased_layout(const char* op, const kernels::BlockSparseLayout* layout, const AttentionDims& s,
                         const Tensor& q, const Tensor& k) {
  EF_CHECK(layout != nullptr, ValueError, op, ": layout is null; expected a built layout");
  EF_CHECK(layout->N == s.N && layout->M == s.M, ShapeError, op, ": the layout is for n = ", layout->N,
           ", m = ", layout->M, " but q is ", q.describe(), " and k is ", k.describe(),
           "; expected a layout of the same sizes");
  EF_CHECK(!layout->reordered(), ValueError, op, ": a score bias needs a layout in q/k order");
}

}  // namespace

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout) {
  return block_sparse_attention(q, k, v, opts, Layouts{std::move(layout)});
}

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              const Layouts& parts) {
  const AttentionDims s = validate_attention("block_sparse_attention", q, k, v, opts);
  EF_CHECK(!parts.empty(), ValueError, "block_sparse_attention: no layout; expected at least one part");
  for (const auto& layout : parts) {
    EF_CHECK(layout != nullptr, ValueError,
             "block_sparse_attention: layout is null; expected a built layout");
    EF_CHECK(layout->N == s.N && layout->M == s.M, ShapeError,
             "block_sparse_attention: the layout is for n = ", layout->N, ", m = ", layout->M, " but q is ",
             q.describe(), " and k is ", k.describe(), "; expected a layout of the same sizes");
  }
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  const int64_t BH = s.B * s.H;
  const kernels::FlashDropout dr = reserve_dropout(opts.dropout, s);
  // The kernel's causal cut works on its own indices: a reordered part carries causality in its rule.
  auto causal_of = [causal = opts.causal](const kernels::BlockSparseLayout& L) {
    return causal && !L.reordered();
  };
  Tensor out = Tensor::zeros({s.B, s.H, s.N, s.d});
  Tensor lse = Tensor::empty({s.B, s.H, s.N});
  if (parts.size() == 1 && !parts[0]->reordered()) {
    if (out.numel() > 0)
      kernels::block_sparse_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                              mask_ptr(km), out.data<float>(), lse.data<float>(), s.B, s.H,
                                              s.d, s.scale, opts.causal, *parts[0], &dr);
  } else if (out.numel() > 0) {
    // Each part gives O_p (normalized over its keys) and L_p; the union (the parts are disjoint) is
    // O = sum_p exp(L_p - L) O_p with L = log sum_p exp(L_p), folded part by part in order.
    constexpr float kInf = std::numeric_limits<float>::infinity();
    float* L = lse.data<float>();
    float* O = out.data<float>();
    size_t next = 0;
    if (!parts[0]->reordered()) {  // the first part in q's order writes O and L directly
      kernels::block_sparse_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                              mask_ptr(km), O, L, s.B, s.H, s.d, s.scale,
                                              causal_of(*parts[0]), *parts[0], &dr);
      for (int64_t i = 0; i < lse.numel(); ++i)
        if (L[i] == kInf) L[i] = -kInf;  // no key yet
      next = 1;
    } else {
      std::fill(L, L + lse.numel(), -kInf);
    }
    for (size_t n = next; n < parts.size(); ++n) {
      const auto& part = parts[n];
      const PartInputs in = part_inputs(*part, qc, kc, vc, km, s);
      const int64_t rows = part->rows;
      Tensor op = Tensor::empty({BH, rows, s.d}), lp = Tensor::empty({BH, rows});
      kernels::block_sparse_attention_forward(in.q.data<float>(), in.k.data<float>(), in.v.data<float>(),
                                              mask_ptr(in.key_mask), op.data<float>(), lp.data<float>(), s.B,
                                              s.H, s.d, s.scale, causal_of(*part), *part, &dr);
      const float* po = op.data<float>();
      const float* pl = lp.data<float>();
      parallel::parallel_for(BH * rows, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          if (pl[r] == kInf) continue;  // no key of this part
          const int64_t at =
              part->query_index.empty() ? r : (r / rows) * s.N + part->query_index[size_t(r % rows)];
          const float old = L[at], hi = std::max(old, pl[r]);
          const float a = std::exp(old - hi), b = std::exp(pl[r] - hi), sum = a + b;
          L[at] = hi + std::log(sum);
          for (int64_t c = 0; c < s.d; ++c)
            O[at * s.d + c] = (O[at * s.d + c] * a + po[r * s.d + c] * b) / sum;
        }
      });
    }
    for (int64_t i = 0; i < lse.numel(); ++i)
      if (L[i] == -kInf) L[i] = kInf;  // no key at all: exp(S - L) = 0 in the backward
  }
  Tensor od = out.detach();
  return autograd::record(
      "block_sparse_attention", out, {q, k, v},
      [qc, kc, vc, km, od, lse, s, dr, parts, causal_of](const Tensor& g) {
        if (qc.numel() == 0 || kc.numel() == 0)
          return std::vector<Tensor>{Tensor::zeros(qc.shape()), Tensor::zeros(kc.shape()),
                                     Tensor::zeros(vc.shape())};
        Tensor gc = g.contiguous_data();
        const int64_t BH = s.B * s.H;
        if (parts.size() == 1 && !parts[0]->reordered()) {
          Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(kc.shape()),
                 dv = Tensor::empty(vc.shape());
          kernels::block_sparse_attention_backward(
              qc.data<float>(), kc.data<float>(), vc.data<float>(), mask_ptr(km), od.data<float>(),
              lse.data<float>(), gc.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>(), s.B,
              s.H, s.d, s.scale, causal_of(*parts[0]), *parts[0], &dr);
          return std::vector<Tensor>{dq, dk, dv};
        }
        // Each part's backward with the union's O and L gives exactly its keys' share of every gradient.
        Tensor dq = Tensor::zeros(qc.shape()), dk = Tensor::zeros(kc.shape()), dv = Tensor::zeros(vc.shape());
        size_t next = 0;
        if (!parts[0]->reordered()) {  // the first part in q's order writes every gradient row directly
          kernels::block_sparse_attention_backward(
              qc.data<float>(), kc.data<float>(), vc.data<float>(), mask_ptr(km), od.data<float>(),
              lse.data<float>(), gc.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>(), s.B,
              s.H, s.d, s.scale, causal_of(*parts[0]), *parts[0], &dr);
          next = 1;
        }
        for (size_t n = next; n < parts.size(); ++n) {
          const auto& part = parts[n];
          const PartInputs in = part_inputs(*part, qc, kc, vc, km, s);
          const Tensor o = gather_rows(od, BH, s.N, s.d, part->query_index);
          const Tensor l = gather_rows(lse, BH, s.N, 1, part->query_index);
          const Tensor dout = gather_rows(gc, BH, s.N, s.d, part->query_index);
          Tensor dqp = Tensor::empty({BH, part->rows, s.d}), dkp = Tensor::empty({BH, part->keys, s.d}),
                 dvp = Tensor::empty({BH, part->keys, s.d});
          kernels::block_sparse_attention_backward(
              in.q.data<float>(), in.k.data<float>(), in.v.data<float>(), mask_ptr(in.key_mask),
              o.data<float>(), l.data<float>(), dout.data<float>(), dqp.data<float>(), dkp.data<float>(),
              dvp.data<float>(), s.B, s.H, s.d, s.scale, causal_of(*part), *part, &dr);
          scatter_add_rows(dq.data<float>(), dqp.data<float>(), BH, s.N, s.d, part->query_index, part->rows);
          scatter_add_rows(dk.data<float>(), dkp.data<float>(), BH, s.M, s.d, part->key_index, part->keys);
          scatter_add_rows(dv.data<float>(), dvp.data<float>(), BH, s.M, s.d, part->key_index, part->keys);
        }
        return std::vector<Tensor>{dq, dk, dv};
      });
}

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout,
                              const RelativeScoreBias& bias) {
  const char* op = "block_sparse_attention";
  const AttentionDims s = validate_attention(op, q, k, v, opts);
  check_biased_layout(op, layout.get(), s, q, k);
  const kernels::RelativeLabels labels{bias.max_distance, bias.globals};
  EF_CHECK(bias.max_distance >= 0 && bias.globals >= 0, ValueError, op, ": max_distance = ", bias.max_distance,
           ", globals = ", bias.globals, "; expected both >= 0");
  EF_CHECK(bias.table.defined() && bias.table.dtype() == DType::Float32 &&
               bias.table.shape() == (Shape{s.H, labels.count()}),
           ShapeError, op, ": the bias table is ", bias.table.defined() ? bias.table.describe() : "undefined",
           "; expected float32 [", s.H, ", ", labels.count(), "] (heads, 2 max_distance + 3 labels)");
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor tc = bias.table.contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  const kernels::FlashDropout dr = reserve_dropout(opts.dropout, s);
  const kernels::ScoreBiasTable table{tc.data<float>(), labels};
  Tensor out = Tensor::zeros({s.B, s.H, s.N, s.d});
  Tensor lse = Tensor::empty({s.B, s.H, s.N});
  if (out.numel() > 0)
    kernels::block_sparse_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(), mask_ptr(km),
                                            out.data<float>(), lse.data<float>(), s.B, s.H, s.d, s.scale,
                                            opts.causal, *layout, &dr, &table);
  Tensor od = out.detach();
  return autograd::record(
      "block_sparse_attention_biased", out, {q, k, v, bias.table},
      [qc, kc, vc, tc, km, od, lse, s, dr, layout, labels, causal = opts.causal](const Tensor& g) {
        Tensor dq = Tensor::zeros(qc.shape()), dk = Tensor::zeros(kc.shape()), dv = Tensor::zeros(vc.shape());
        Tensor dtable = Tensor::zeros(tc.shape());
        if (qc.numel() == 0 || kc.numel() == 0) return std::vector<Tensor>{dq, dk, dv, dtable};
        Tensor gc = g.contiguous_data();
        const kernels::ScoreBiasTable table{tc.data<float>(), labels};
        kernels::block_sparse_attention_backward(
            qc.data<float>(), kc.data<float>(), vc.data<float>(), mask_ptr(km), od.data<float>(), lse.data<float>(),
            gc.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>(), s.B, s.H, s.d, s.scale, causal,
            *layout, &dr, &table, dtable.data<float>());
        return std::vector<Tensor>{dq, dk, dv, dtable};
      });
}

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout,
                              const PositionScoreBias& bias) {
  const char* op = "block_sparse_attention";
  const AttentionDims s = validate_attention(op, q, k, v, opts);
  check_biased_layout(op, layout.get(), s, q, k);
  EF_CHECK(opts.causal && !opts.key_mask.defined(), ValueError, op,
           ": the position score bias needs causal attention without a key mask");
  EF_CHECK(bias.qw.defined() && bias.r.defined() && bias.qw.dtype() == DType::Float32 &&
               bias.r.dtype() == DType::Float32 && bias.qw.shape() == q.shape() &&
               bias.r.shape() == (Shape{s.H, s.M, s.d}),
           ShapeError, op, ": the position bias is qw ", bias.qw.defined() ? bias.qw.describe() : "undefined",
           ", r ", bias.r.defined() ? bias.r.describe() : "undefined", "; expected float32 qw ", q.describe(),
           " and r [", s.H, ", ", s.M, ", ", s.d, "]");
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor qwc = bias.qw.contiguous_data(), rc = bias.r.contiguous_data();
  const kernels::FlashDropout dr = reserve_dropout(opts.dropout, s);
  Tensor out = Tensor::zeros({s.B, s.H, s.N, s.d});
  Tensor lse = Tensor::empty({s.B, s.H, s.N});
  if (out.numel() > 0) {
    const kernels::PositionScores position{qwc.data<float>(), rc.data<float>()};
    kernels::block_sparse_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(), nullptr,
                                            out.data<float>(), lse.data<float>(), s.B, s.H, s.d, s.scale, true,
                                            *layout, &dr, nullptr, &position);
  }
  Tensor od = out.detach();
  return autograd::record(
      "block_sparse_attention_position", out, {q, k, v, bias.qw, bias.r},
      [qc, kc, vc, qwc, rc, od, lse, s, dr, layout](const Tensor& g) {
        Tensor dq = Tensor::zeros(qc.shape()), dk = Tensor::zeros(kc.shape()), dv = Tensor::zeros(vc.shape());
        Tensor dqw = Tensor::zeros(qwc.shape()), dr_ = Tensor::zeros(rc.shape());
        if (qc.numel() == 0 || kc.numel() == 0) return std::vector<Tensor>{dq, dk, dv, dqw, dr_};
        Tensor gc = g.contiguous_data();
        const kernels::PositionScores position{qwc.data<float>(), rc.data<float>()};
        kernels::block_sparse_attention_backward(
            qc.data<float>(), kc.data<float>(), vc.data<float>(), nullptr, od.data<float>(), lse.data<float>(),
            gc.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>(), s.B, s.H, s.d, s.scale, true,
            *layout, &dr, nullptr, nullptr, &position, dqw.data<float>(), dr_.data<float>());
        return std::vector<Tensor>{dq, dk, dv, dqw, dr_};
      });
}

}  // namespace eformer::attention
