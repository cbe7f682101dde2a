#include "eformer/attention/kernels/lsh.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/ops/activation.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/allocator.h"
#include "eformer/core/parallel.h"

namespace eformer::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kHashRows = 64;  // rows hashed per projection tile

// The sorted-index ranges of one tile of a round: queries [q0, q0 + rows), keys [k0, k0 + cols).
struct Tile {
  int64_t q0, rows, k0, cols;
};
// Query chunk a and every key any of its queries may see (causal: the 2c - 1 sorted indices before
// the chunk's first query; bidirectional: the previous chunk).
Tile query_tile(const LshSizes& s, int64_t a) {
  const int64_t c = s.chunk, q0 = a * c, rows = std::min(c, s.N - q0);
  const int64_t k0 = std::max<int64_t>(0, s.causal ? q0 - 2 * c + 1 : q0 - c);
  return {q0, rows, k0, q0 + rows - k0};
}
// Key chunk b and every query that may see one of its keys.
Tile key_tile(const LshSizes& s, int64_t b) {
  const int64_t c = s.chunk, k0 = b * c, cols = std::min(c, s.N - k0);
  const int64_t q1 = std::min(s.N, s.causal ? k0 + cols + 2 * c - 1 : k0 + 2 * c);
  return {k0, q1 - k0, k0, cols};
}
int64_t max_tile_keys(const LshSizes& s) { return s.causal ? 3 * s.chunk - 1 : 2 * s.chunk; }

// Which keys of a tile a query row sees: the visibility rule of kernels/lsh.h in a form loops can run
// fast. Per tile the buckets of its key columns (-1: a masked key, never seen) and of its query rows;
// query row i sees column j iff lo(i) <= j < hi(i), j is not its own key, and (causal) the buckets agree.
// Its own key is never seen here: a row that sees nothing else in any round takes its own value after
// the rounds (the self score -1e5 of the definition, whose weight is exactly 0 or 1).
struct TileRule {
  const Tile& t;
  const LshSizes& s;
  const int32_t* key_bucket;    // [t.cols]
  const int32_t* query_bucket;  // [t.rows]
  // The column range of row i: causal, the 2c - 1 sorted keys before it; bidirectional, the chunk of
  // the query and the one before.
  void range(int64_t i, int64_t& lo, int64_t& hi) const {
    const int64_t sq = t.q0 + i, c = s.chunk;
    if (s.causal) {
      lo = sq - 2 * c + 1 - t.k0, hi = sq + 1 - t.k0;
    } else {
      lo = (sq / c - 1) * c - t.k0, hi = (sq / c + 1) * c - t.k0;
    }
    lo = std::max<int64_t>(lo, 0), hi = std::min(hi, t.cols);
  }
  bool sees(int64_t i, int64_t j) const {
    return j != t.q0 + i - t.k0 && key_bucket[j] >= 0 && (!s.causal || key_bucket[j] == query_bucket[i]);
  }
};

// Fills the tile's bucket arrays from the round's order and buckets (by position).
void tile_buckets(const Tile& t, const int32_t* order, const int32_t* bucket, const bool* km, int32_t* key_bucket,
                  int32_t* query_bucket) {
  for (int64_t j = 0; j < t.cols; ++j) {
    const int32_t p = order[t.k0 + j];
    key_bucket[j] = km && !km[p] ? -1 : bucket[p];
  }
  for (int64_t i = 0; i < t.rows; ++i) query_bucket[i] = bucket[order[t.q0 + i]];
}


// The score tile S [t.rows, ld] = scale Q K^T with the rule applied (hidden: -inf).
void mask_scores(float* S, int64_t ld, const TileRule& rule) {
  for (int64_t i = 0; i < rule.t.rows; ++i) {
    float* row = S + i * ld;
    int64_t lo, hi;
    rule.range(i, lo, hi);
    for (int64_t j = 0; j < rule.t.cols; ++j)
      if (j < lo || j >= hi || !rule.sees(i, j)) row[j] = kNegInf;
  }
}

// P = exp(S - L) and dS = P o (dP - D) of a tile (in place: S becomes P, dP becomes dS), 0 where hidden.
void probabilities_and_score_grads(float* S, float* dP, int64_t ld, const TileRule& rule, const float* L,
                                   const float* D) {
  for (int64_t i = 0; i < rule.t.rows; ++i) {
    float *p = S + i * ld, *ds = dP + i * ld;
    int64_t lo, hi;
    rule.range(i, lo, hi);
    for (int64_t j = 0; j < rule.t.cols; ++j) {
      if (j >= lo && j < hi && rule.sees(i, j)) {
        p[j] = fast_exp(p[j] - L[i]);
        ds[j] = p[j] * (ds[j] - D[i]);
      } else {
        p[j] = 0.0f, ds[j] = 0.0f;
      }
    }
  }
}

}  // namespace

void gather_rows(const float* x, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* dst,
                 int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(dst + i * ld, x + int64_t(order[i0 + i]) * d, size_t(d) * sizeof(float));
    std::fill(dst + i * ld + d, dst + (i + 1) * ld, 0.0f);
  }
}

void gather_transposed(const float* x, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* dst,
                       int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = x + int64_t(order[i0 + i]) * d;
    for (int64_t c = 0; c < d; ++c) dst[c * ld + i] = src[c];
  }
  for (int64_t c = 0; c < d; ++c) std::fill(dst + c * ld + rows, dst + (c + 1) * ld, 0.0f);
}

void row_softmax(float* s, int64_t n, float& inv, float& lse) {
  float m = kNegInf;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  if (m == kNegInf) {
    std::fill(s, s + n, 0.0f);
    inv = 0.0f, lse = kNegInf;
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] = fast_exp(s[j] - m);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += s[j];
  inv = 1.0f / sum, lse = m + std::log(sum);
}

void scatter_add(const float* src, int64_t ld, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* x) {
  for (int64_t i = 0; i < rows; ++i) {
    float* dst = x + int64_t(order[i0 + i]) * d;
    const float* a = src + i * ld;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) dst[c] += a[c];
  }
}

void lsh_normalize_rows(const float* k, float* kn, float* inv, int64_t rows, int64_t d) {
  parallel::parallel_for(rows, 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) inv[i] = lsh_normalize_row(k + i * d, kn + i * d, d);
  });
}

void lsh_normalize_backward(const float* kn, const float* dkn, const float* inv, float* dk, int64_t rows, int64_t d) {
  parallel::parallel_for(rows, 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float dot = 0.0f;
      for (int64_t c = 0; c < d; ++c) dot += kn[i * d + c] * dkn[i * d + c];
      for (int64_t c = 0; c < d; ++c) dk[i * d + c] += (dkn[i * d + c] - kn[i * d + c] * dot) * inv[i];
    }
  });
}

void lsh_merge_round(float* acc, float& L, const float* o_r, float lse_r, int64_t d) {
  if (lse_r == kNegInf) return;
  if (L == kNegInf) {
    std::memcpy(acc, o_r, size_t(d) * sizeof(float));
    L = lse_r;
    return;
  }
  const float m = std::max(L, lse_r), a = std::exp(L - m), b = std::exp(lse_r - m), inv = 1.0f / (a + b);
  for (int64_t c = 0; c < d; ++c) acc[c] = (acc[c] * a + o_r[c] * b) * inv;
  L = m + std::log(a + b);
}

void lsh_hash_rows(const float* x, int64_t rows, int64_t d, const float* rotation, int64_t n_buckets,
                   int32_t* bucket) {
  if (n_buckets == 1) {  // no hashing: one bucket (exact shared-QK attention within the chunks)
    std::fill(bucket, bucket + rows, 0);
    return;
  }
  int64_t factors[2], count;
  lsh_bucket_factors(n_buckets, factors, count);
  const int64_t cols = lsh_rotation_columns(n_buckets), cp = tile::round_up(cols);
  ScratchBuffer rp(d * cp), proj(kHashRows * cp);
  for (int64_t c = 0; c < d; ++c) {
    std::memcpy(rp.data + c * cp, rotation + c * cols, size_t(cols) * sizeof(float));
    std::fill(rp.data + c * cp + cols, rp.data + (c + 1) * cp, 0.0f);
  }
  for (int64_t i0 = 0; i0 < rows; i0 += kHashRows) {
    const int64_t n = std::min(kHashRows, rows - i0);
    tile::gemm(n, cp, d, x + i0 * d, d, 1, rp.data, cp, proj.data, cp, 1.0f, false);
    for (int64_t i = 0; i < n; ++i) {
      int64_t combined = 0, scale = 1;
      const float* p = proj.data + i * cp;
      for (int64_t f = 0; f < count; ++f) {
        const int64_t half = factors[f] / 2;
        float best = kNegInf;
        int64_t arg = 0;
        for (int64_t j = 0; j < half; ++j)  // argmax over [x R; -x R], the first maximum
          if (p[j] > best) best = p[j], arg = j;
        for (int64_t j = 0; j < half; ++j)
          if (-p[j] > best) best = -p[j], arg = half + j;
        combined += arg * scale;
        scale *= factors[f];
        p += half;
      }
      bucket[i0 + i] = int32_t(combined);
    }
  }
}

void lsh_hash(const float* kn, const float* rotations, int32_t* bucket, const LshSizes& s) {
  const int64_t BH = s.B * s.H, N = s.N, d = s.d, blocks = (N + 255) / 256, cols = lsh_rotation_columns(s.n_buckets);
  parallel::parallel_for(s.n_hashes * BH * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t r = item / (BH * blocks), bh = item / blocks % BH, blk = item % blocks;
      const int64_t n0 = blk * 256, rows = std::min<int64_t>(256, N - n0);
      const float* R = rotations + (r * s.H + bh % s.H) * d * cols;
      lsh_hash_rows(kn + (bh * N + n0) * d, rows, d, R, s.n_buckets, bucket + (r * BH + bh) * N + n0);
    }
  });
}

void sort_by_bucket(const bool* key_mask, int32_t* bucket, int32_t* order, const LshSizes& s) {
  const int64_t BH = s.B * s.H, N = s.N;
  // A counting sort per (round, head): stable, so within a bucket the order is the position order.
  parallel::parallel_for(s.n_hashes * BH, 1, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> start(size_t(s.n_buckets + 2));
    for (int64_t item = i0; item < i1; ++item) {
      int32_t* bk = bucket + item * N;
      int32_t* ord = order + item * N;
      if (key_mask) {
        const bool* km = key_mask + (item % BH / s.H) * N;
        for (int64_t i = 0; i < N; ++i)
          if (!km[i]) bk[i] = int32_t(s.n_buckets);
      }
      std::fill(start.begin(), start.end(), 0);
      for (int64_t i = 0; i < N; ++i) ++start[size_t(bk[i] + 1)];
      for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
      for (int64_t i = 0; i < N; ++i) ord[start[size_t(bk[i])]++] = int32_t(i);
    }
  });
}

void lsh_sort(const float* kn, const float* rotations, const bool* key_mask, int32_t* bucket, int32_t* order,
              const LshSizes& s) {
  lsh_hash(kn, rotations, bucket, s);
  sort_by_bucket(key_mask, bucket, order, s);
}

void lsh_attention_forward(const float* q, const float* kn, const float* v, const bool* key_mask,
                           const int32_t* bucket, const int32_t* order, float* out, float* lse,
                           const LshSizes& s) {
  const int64_t BH = s.B * s.H, N = s.N, d = s.d, c = s.chunk, chunks = (N + c - 1) / c;
  const int64_t dp = tile::round_up(d), Wp = tile::round_up(max_tile_keys(s));
  std::fill(out, out + BH * N * d, 0.0f);
  std::fill(lse, lse + BH * N, kNegInf);
  // Per thread: Q [c, d], K^T [d, Wp], V [Wp, dp], S [c, Wp], O [c, dp].
  const int64_t scratch = c * d + d * Wp + Wp * dp + c * Wp + c * dp;
  for (int64_t r = 0; r < s.n_hashes; ++r)
    for_each_item(BH * chunks, scratch, [&](int64_t item, float* buf) {
      std::vector<int32_t> kb(static_cast<size_t>(max_tile_keys(s))), qb(static_cast<size_t>(c));
      const int64_t bh = item / chunks;
      const Tile t = query_tile(s, item % chunks);
      const int32_t* ord = order + (r * BH + bh) * N;
      const int32_t* bkt = bucket + (r * BH + bh) * N;
      const bool* km = key_mask ? key_mask + (bh / s.H) * N : nullptr;
      float *Q = buf, *KT = Q + c * d, *V = KT + d * Wp, *S = V + Wp * dp, *O = S + c * Wp;
      const int64_t cp = tile::round_up(t.cols);
      gather_rows(q + bh * N * d, ord, t.q0, t.rows, d, Q, d);
      gather_transposed(kn + bh * N * d, ord, t.k0, t.cols, d, KT, cp);
      gather_rows(v + bh * N * d, ord, t.k0, t.cols, d, V, dp);
      // S = scale Q K^T [rows, cols], the rule applied, a softmax per row.
      tile::gemm(t.rows, cp, d, Q, d, 1, KT, cp, S, cp, s.scale, false);
      tile_buckets(t, ord, bkt, km, kb.data(), qb.data());
      mask_scores(S, cp, TileRule{t, s, kb.data(), qb.data()});
      std::vector<float> inv(size_t(t.rows)), row_lse(size_t(t.rows));
      for (int64_t i = 0; i < t.rows; ++i) row_softmax(S + i * cp, t.cols, inv[size_t(i)], row_lse[size_t(i)]);
      // O = P V [rows, dp], then o_r = O / l folded into the running output at the query's position.
      tile::gemm(t.rows, dp, t.cols, S, cp, 1, V, dp, O, dp, 1.0f, false);
      for (int64_t i = 0; i < t.rows; ++i) {
        float* o = O + i * dp;
        for (int64_t x = 0; x < d; ++x) o[x] *= inv[size_t(i)];
        const int64_t pos = bh * N + ord[t.q0 + i];
        lsh_merge_round(out + pos * d, lse[pos], o, row_lse[size_t(i)], d);
      }
    });
  // Rows that saw no other key in any round: their own value if their key is real (L stays -inf, the
  // backward's mark), else 0 (L = +inf, so that exp(s - L) = 0).
  for (int64_t i = 0; i < BH * N; ++i) {
    if (lse[i] != kNegInf) continue;
    if (!key_mask || key_mask[(i / (s.H * N)) * N + i % N])
      std::memcpy(out + i * d, v + i * d, size_t(d) * sizeof(float));
    else
      lse[i] = std::numeric_limits<float>::infinity();
  }
}

void lsh_attention_backward(const float* q, const float* kn, const float* v, const bool* key_mask,
                            const int32_t* bucket, const int32_t* order, const float* out, const float* lse,
                            const float* dout, float* dq, float* dkn, float* dv, const LshSizes& s) {
  const int64_t BH = s.B * s.H, N = s.N, d = s.d, c = s.chunk, chunks = (N + c - 1) / c;
  const int64_t dp = tile::round_up(d), W = max_tile_keys(s), Wp = tile::round_up(W);
  std::fill(dq, dq + BH * N * d, 0.0f);
  std::fill(dkn, dkn + BH * N * d, 0.0f);
  std::fill(dv, dv + BH * N * d, 0.0f);
  // D_i = dO_i . O_i (the row term of the softmax gradient, FlashAttention-2).
  ScratchBuffer Dbuf(BH * N);
  float* D = Dbuf.data;
  parallel::parallel_for(BH * N, 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float acc = 0.0f;
      for (int64_t x = 0; x < d; ++x) acc += dout[i * d + x] * out[i * d + x];
      D[i] = acc;
    }
  });
  // Per thread: Q, dO [W, dp]; K^T, V^T [d, Wp]; K [Wp, dp]; S, dS [W, Wp]; two [W, dp] results; L, D [W].
  const int64_t scratch = 2 * W * dp + 2 * d * Wp + Wp * dp + 2 * W * Wp + 2 * W * dp + 2 * W;
  for (int64_t r = 0; r < s.n_hashes; ++r) {
    const int32_t* ord_r = order + r * BH * N;
    const int32_t* bkt_r = bucket + r * BH * N;
    for (const bool by_keys : {true, false})
      for_each_item(BH * chunks, scratch, [&](int64_t item, float* buf) {
        std::vector<int32_t> kb(static_cast<size_t>(W)), qb(static_cast<size_t>(W));
        const int64_t bh = item / chunks;
        const Tile t = by_keys ? key_tile(s, item % chunks) : query_tile(s, item % chunks);
        const int32_t* ord = ord_r + bh * N;
        const int32_t* bkt = bkt_r + bh * N;
        const bool* km = key_mask ? key_mask + (bh / s.H) * N : nullptr;
        float *Q = buf, *dO = Q + W * dp, *KT = dO + W * dp, *VT = KT + d * Wp, *K = VT + d * Wp;
        float *S = K + Wp * dp, *dS = S + W * Wp, *R1 = dS + W * Wp, *R2 = R1 + W * dp, *L = R2 + W * dp,
              *Dt = L + W;
        const int64_t cp = tile::round_up(t.cols);
        gather_rows(q + bh * N * d, ord, t.q0, t.rows, d, Q, dp);
        gather_rows(dout + bh * N * d, ord, t.q0, t.rows, d, dO, dp);
        for (int64_t i = 0; i < t.rows; ++i) {
          L[i] = lse[bh * N + ord[t.q0 + i]];
          Dt[i] = D[bh * N + ord[t.q0 + i]];
        }
        gather_transposed(kn + bh * N * d, ord, t.k0, t.cols, d, KT, cp);
        gather_transposed(v + bh * N * d, ord, t.k0, t.cols, d, VT, cp);
        // S = scale Q K^T, dP = dO V^T [rows, cols]; then P and dS in place.
        tile::gemm(t.rows, cp, d, Q, dp, 1, KT, cp, S, cp, s.scale, false);
        tile::gemm(t.rows, cp, d, dO, dp, 1, VT, cp, dS, cp, 1.0f, false);
        tile_buckets(t, ord, bkt, km, kb.data(), qb.data());
        probabilities_and_score_grads(S, dS, cp, TileRule{t, s, kb.data(), qb.data()}, L, Dt);
        if (by_keys) {
          // dV = P^T dO, dK^ = scale dS^T Q   [cols, dp]
          tile::gemm(t.cols, dp, t.rows, S, 1, cp, dO, dp, R1, dp, 1.0f, false);
          tile::gemm(t.cols, dp, t.rows, dS, 1, cp, Q, dp, R2, dp, s.scale, false);
          scatter_add(R1, dp, ord, t.k0, t.cols, d, dv + bh * N * d);
          scatter_add(R2, dp, ord, t.k0, t.cols, d, dkn + bh * N * d);
        } else {
          // dQ = scale dS K^   [rows, dp]
          gather_rows(kn + bh * N * d, ord, t.k0, t.cols, d, K, dp);
          tile::gemm(t.rows, dp, t.cols, dS, cp, 1, K, dp, R1, dp, s.scale, false);
          scatter_add(R1, dp, ord, t.q0, t.rows, d, dq + bh * N * d);
        }
      });
  }
  // Rows that took their own value: dV_i += dO_i.
  for (int64_t i = 0; i < BH * N; ++i)
    if (lse[i] == kNegInf)
      for (int64_t x = 0; x < d; ++x) dv[i * d + x] += dout[i * d + x];
}

}  // namespace eformer::kernels

namespace eformer::attention {

using kernels::IndexBuffer;

Tensor lsh_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rotations, int64_t n_buckets,
                     int64_t chunk, const AttentionOptions& opts) {
  const char* op = "lsh_attention";
  const AttentionDims dims = validate_attention(op, q, k, v, opts);
  EF_CHECK(n_buckets >= 1 && n_buckets <= (int64_t(1) << 30) && (n_buckets & (n_buckets - 1)) == 0, ValueError, op,
           ": n_buckets = ", n_buckets, "; expected a power of two (1: no hashing)");
  const int64_t columns = kernels::lsh_rotation_columns(n_buckets);
  EF_CHECK(rotations.defined() && rotations.dtype() == DType::Float32 && rotations.dim() == 4 &&
               rotations.size(0) >= 1 && rotations.size(1) == dims.H && rotations.size(2) == dims.d &&
               rotations.size(3) == columns,
           ShapeError, op, ": rotations is ", rotations.defined() ? rotations.describe() : std::string("undefined"),
           "; expected float32 [n_hashes, heads, head_dim, columns] = [n_hashes, ", dims.H, ", ", dims.d, ", ",
           columns, "] for n_buckets = ", n_buckets);
  Tensor rc = rotations.contiguous_data();
  const BucketAssigner hash = [rc](const float* kn, int32_t* bucket, const kernels::LshSizes& s) {
    kernels::lsh_hash(kn, rc.data<float>(), bucket, s);
  };
  return sorted_chunk_attention(op, q, k, v, rotations.size(0), n_buckets, chunk, hash, opts);
}

Tensor sorted_chunk_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t rounds,
                              int64_t n_buckets, int64_t chunk, const BucketAssigner& assign,
                              const AttentionOptions& opts) {
  const AttentionDims dims = validate_attention(op, q, k, v, opts);
  EF_CHECK(dims.N == dims.M, ShapeError, op, ": attention over sorted buckets is self-attention; q has N = ", dims.N,
           " rows but k has M = ", dims.M, " (expected N == M)");
  EF_CHECK(opts.dropout == 0.0f, ValueError, op, ": dropout = ", opts.dropout,
           "; attention over sorted buckets has no attention dropout (expected 0)");
  EF_CHECK(chunk >= 1, ValueError, op, ": chunk = ", chunk, "; expected >= 1");
  EF_CHECK(dims.N < (int64_t(1) << 31), ValueError, op, ": N = ", dims.N, "; expected < 2^31");
  EF_CHECK(rounds >= 1 && n_buckets >= 1 && n_buckets < (int64_t(1) << 31), ValueError, op, ": rounds = ", rounds,
           ", n_buckets = ", n_buckets, "; expected both >= 1");
  kernels::LshSizes s{dims.B, dims.H, dims.N, dims.d, rounds, n_buckets, chunk, dims.scale, opts.causal};
  const int64_t BH = s.B * s.H, rows = BH * s.N;
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  // k^ = k / sqrt(|k|^2 + eps); inv_norm keeps 1 / sqrt(|k|^2 + eps) for the backward.
  Tensor kn = Tensor::empty(kc.shape()), inv_norm = Tensor::empty({rows});
  kernels::lsh_normalize_rows(kc.data<float>(), kn.data<float>(), inv_norm.data<float>(), rows, s.d);
  const bool* mask = km.defined() ? km.data<bool>() : nullptr;
  auto bucket = std::make_shared<IndexBuffer>(s.n_hashes * rows);
  auto order = std::make_shared<IndexBuffer>(s.n_hashes * rows);
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.d}), lse = Tensor::empty({s.B, s.H, s.N});
  if (rows > 0) {
    assign(kn.data<float>(), bucket->data, s);
    kernels::sort_by_bucket(mask, bucket->data, order->data, s);
    kernels::lsh_attention_forward(qc.data<float>(), kn.data<float>(), vc.data<float>(), mask, bucket->data,
                                   order->data, out.data<float>(), lse.data<float>(), s);
  }
  Tensor od = out.detach();
  // Shared QK (k is q itself): the op's inputs are then (q, v) and the key gradient is added into dq
  // here, so the backward holds no separate dk and the engine sums nothing (a GiB each at 2^20 tokens,
  // d = 256).
  const bool shared_qk = q.is_same(k);
  return autograd::record(
      op, out, shared_qk ? std::vector<Tensor>{q, v} : std::vector<Tensor>{q, k, v},
      [qc, kn, vc, km, inv_norm, bucket, order, od, lse, s, shared_qk](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dq = Tensor::zeros(qc.shape()), dv = Tensor::zeros(vc.shape());
        Tensor dk = shared_qk ? dq : Tensor::zeros(kn.shape());
        auto grads = [&] { return shared_qk ? std::vector<Tensor>{dq, dv} : std::vector<Tensor>{dq, dk, dv}; };
        const int64_t n = s.B * s.H * s.N;
        if (n == 0) return grads();
        Tensor dkn = Tensor::empty(kn.shape());
        kernels::lsh_attention_backward(qc.data<float>(), kn.data<float>(), vc.data<float>(),
                                        km.defined() ? km.data<bool>() : nullptr, bucket->data, order->data,
                                        od.data<float>(), lse.data<float>(), gc.data<float>(), dq.data<float>(),
                                        dkn.data<float>(), dv.data<float>(), s);
        kernels::lsh_normalize_backward(kn.data<float>(), dkn.data<float>(), inv_norm.data<float>(),
                                        dk.data<float>(), n, s.d);
        return grads();
      });
}

}  // namespace eformer::attention
