// LSH attention (Reformer, Kitaev et al. 2020, sec. 2) as graph-free kernels and the differentiable op
// on them. Keys are normalized, k^_j = k_j / sqrt(|k_j|^2 + eps) (shared-QK: with k = q, eq. before
// sec. 2.1), hashed by angular LSH h(x) = argmax([x R; -x R]) with random rotations R [d, b/2], one
// per round and head (factorized above 256 buckets, below); each round sorts the positions stably by
// (bucket, position) and cuts the sorted order into chunks of c:
//   bidirectional  a query attends every key of its own chunk and of the chunk before it (the
//                  paper's P~_i, no wrap-around: chunk 0 has no previous chunk);
//   causal         a query at sorted index s attends the keys of its own bucket among the sorted
//                  indices [s - 2c + 1, s]: the last <= 2c - 1 earlier keys of its bucket, a set
//                  that no later token can change (plain causal chunking leaks: a later token moves
//                  the chunk boundaries). docs/MECHANISMS.md, "lsh".
// A token's own key has the constant score kLshSelfScore = -1e5 (HF's self mask; no gradient): its
// weight is exactly 0 whenever any other key is visible in some round (exp underflows) and 1 when it is
// the only one. Computed so: the own key is left out of every tile, and a row that saw nothing else
// takes its own value (-1e5 itself would cost float32 its precision in the log-sum-exp). Masked
// keys (key_mask false) go to a bucket of their own after the real ones and are never attended.
// Rounds are combined by their log-sum-exp weights, o = sum_r exp(lse_r - logsumexp_r lse_r) o_r:
// one softmax over the rounds' candidates where a key seen in several rounds counts once per round.
//
// Memory: the output, its log-sum-exp [B, H, N] and per round the buckets and the sort order
// (int32 [n_hashes, B, H, N]); the backward recomputes score tiles. Rounds run one after the other
// (each position is in exactly one chunk per round, so no two threads touch the same row), in
// parallel over (b, h, chunk) inside a round: bits do not depend on the thread count.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>

#include "eformer/attention/options.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// q, k, v [B, H, N, d] float32, rotations [n_hashes, H, d, lsh_rotation_columns(n_buckets)] (n_buckets
// a power of two >= 2; the rotations receive no gradient), chunk >= 1 -> [B, H, N, d]. opts.causal and opts.key_mask as
// above; opts.scale multiplies q . k^ (0: 1 / sqrt(d)); opts.dropout must be 0. Gradients reach q,
// k (through the normalization) and v.
Tensor lsh_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rotations, int64_t n_buckets,
                     int64_t chunk, const AttentionOptions& opts = {});

}  // namespace eformer::attention

namespace eformer::kernels {

inline constexpr float kLshSelfScore = -1e5f;  // a token's score for its own key (HF's self_mask_value)
inline constexpr float kLshNormEps = 1e-12f;   // k^ = k / sqrt(|k|^2 + eps)

// kn = k / sqrt(|k|^2 + eps) for one row of d; returns 1 / sqrt(|k|^2 + eps). The one normalization of
// the parallel pass and the streaming step (the hash of the normalized key must agree bit for bit).
inline float lsh_normalize_row(const float* k, float* kn, int64_t d) {
  float sq = 0.0f;
  for (int64_t c = 0; c < d; ++c) sq += k[c] * k[c];
  const float inv = 1.0f / std::sqrt(sq + kLshNormEps);
  for (int64_t c = 0; c < d; ++c) kn[c] = k[c] * inv;
  return inv;
}

// kn [rows, d] and inv [rows] = 1 / sqrt(|k|^2 + eps) of k [rows, d], in parallel over rows.
void lsh_normalize_rows(const float* k, float* kn, float* inv, int64_t rows, int64_t d);
// The gradient through that normalization, added: dk += (dk^ - k^ (k^ . dk^)) inv, per row.
void lsh_normalize_backward(const float* kn, const float* dkn, const float* inv, float* dk, int64_t rows, int64_t d);

// The tile helpers of the sorted-bucket kernels (and of routing's balanced clusters, kernels/routing_top.h).
// Rows `order[i0 ..)` of x [N, d] gathered into dst [rows, ld] (columns d..ld zero).
void gather_rows(const float* x, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* dst, int64_t ld);
// The same rows transposed: dst [d, ld] (columns rows..ld zero), the B operand of a score tile.
void gather_transposed(const float* x, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* dst,
                       int64_t ld);
// p = exp(s - max) in place over one row of n scores, with 1 / sum p and the row's log-sum-exp (-inf and
// inv = 0 when every score is -inf). The sum runs in column order: hidden keys add exact zeros, so the
// result does not depend on where the visible keys sit in the tile (a causal tile's place in the sorted
// order moves with later tokens; the outputs must not, bit for bit).
void row_softmax(float* s, int64_t n, float& inv, float& lse);
// Adds src [rows, ld] to rows order[i0 ..) of x [N, d].
void scatter_add(const float* src, int64_t ld, const int32_t* order, int64_t i0, int64_t rows, int64_t d, float* x);

struct LshSizes {
  int64_t B = 0, H = 0, N = 0, d = 0;
  int64_t n_hashes = 0, n_buckets = 0, chunk = 0;
  float scale = 0.0f;
  bool causal = false;
};

// Buckets are factorized above kMaxUnfactoredBuckets (HF/trax's num_buckets = [b1, b2]): b = b1 b2 with
// b1 = 2^ceil(log2(b) / 2), each factor an angular hash of its own rotation columns, bucket = i1 + b1 i2.
// Hashing then costs (b1 + b2) / 2 columns per key instead of b / 2 (at 2^20 tokens and 64 keys a
// bucket: 128 instead of 8192).
inline constexpr int64_t kMaxUnfactoredBuckets = 256;
// The factors of n_buckets ({n_buckets} up to kMaxUnfactoredBuckets) and the rotation columns they
// take (the sum of factor / 2).
inline void lsh_bucket_factors(int64_t n_buckets, int64_t factors[2], int64_t& count) {
  if (n_buckets <= kMaxUnfactoredBuckets) {
    factors[0] = n_buckets, count = 1;
    return;
  }
  int64_t e = 0;
  while ((int64_t(1) << e) < n_buckets) ++e;
  factors[0] = int64_t(1) << ((e + 1) / 2), factors[1] = n_buckets / factors[0], count = 2;
}
inline int64_t lsh_rotation_columns(int64_t n_buckets) {
  int64_t f[2], count, columns = 0;
  lsh_bucket_factors(n_buckets, f, count);
  for (int64_t i = 0; i < count; ++i) columns += f[i] / 2;
  return columns;
}

// x [rows, d] . R [d, lsh_rotation_columns(n_buckets)] -> bucket[rows]: per factor b_f over its b_f / 2
// columns, argmax([x R_f; -x R_f]) (the first maximum), combined as i1 + b1 i2. The one hashing routine
// of the parallel pass and the streaming step, so both hash alike bit for bit.
void lsh_hash_rows(const float* x, int64_t rows, int64_t d, const float* rotation, int64_t n_buckets,
                   int32_t* bucket);

// Folds one round's output o_r [d] (log-sum-exp lse_r; -inf: the round saw nothing) into the running
// (acc [d], L; L = -inf before any): acc = (acc e^(L - m) + o_r e^(lse_r - m)) / (e^(L - m) + e^(lse_r - m)),
// L = logaddexp(L, lse_r), m = max(L, lse_r). Rounds are folded in order.
void lsh_merge_round(float* acc, float& L, const float* o_r, float lse_r, int64_t d);

// kn [B*H, N, d] (normalized keys), rotations [n_hashes, H, d, columns] -> bucket [n_hashes, B*H, N].
void lsh_hash(const float* kn, const float* rotations, int32_t* bucket, const LshSizes& s);
// bucket [n_hashes, B*H, N], key_mask [B, N] or null -> masked keys' buckets set to n_buckets, and
// order [n_hashes, B*H, N]: the positions sorted stably by bucket (order[s] = the position at sorted index s).
void sort_by_bucket(const bool* key_mask, int32_t* bucket, int32_t* order, const LshSizes& s);
// lsh_hash then sort_by_bucket.
void lsh_sort(const float* kn, const float* rotations, const bool* key_mask, int32_t* bucket, int32_t* order,
              const LshSizes& s);

// q, kn, v [B*H, N, d] -> out [B*H, N, d] and lse [B*H, N] over the keys other than the row's own:
// -inf marks a row that saw no other key and took its own value, +inf a row that saw nothing (a padded
// token), whose output is 0.
void lsh_attention_forward(const float* q, const float* kn, const float* v, const bool* key_mask,
                           const int32_t* bucket, const int32_t* order, float* out, float* lse,
                           const LshSizes& s);

// The gradients of the forward above for dout: dq, dkn (of the normalized keys), dv [B*H, N, d]. With
// P = exp(S - L) recomputed per tile and D_i = dO_i . O_i: dS = P o (dO V^T - D) (0 at the self score),
// dV = P^T dO, dK^ = scale dS^T Q, dQ = scale dS K^; a row that took its own value adds dO_i to dV_i. Per round one pass by key chunk (dK^, dV) and
// one by query chunk (dQ).
void lsh_attention_backward(const float* q, const float* kn, const float* v, const bool* key_mask,
                            const int32_t* bucket, const int32_t* order, const float* out, const float* lse,
                            const float* dout, float* dq, float* dkn, float* dv, const LshSizes& s);

}  // namespace eformer::kernels

namespace eformer::attention {

// Fills bucket [s.n_hashes, B*H, N] (each in [0, s.n_buckets)) from the normalized keys kn [B*H, N, d]:
// angular hashing for lsh, the nearest centroid for routing. Must not depend on the thread count.
using BucketAssigner = std::function<void(const float* kn, int32_t* bucket, const kernels::LshSizes& s)>;

// The pipeline lsh_attention runs, with the buckets from `assign` (`rounds` of them, n_buckets each):
// normalize the keys, assign, sort stably by (bucket, position), attend in chunks of `chunk` by the
// rule above (causal: own bucket within the 2c - 1 earlier sorted keys), combine the rounds, unsort;
// its backward. `op` names the caller in errors.
Tensor sorted_chunk_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t rounds,
                              int64_t n_buckets, int64_t chunk, const BucketAssigner& assign,
                              const AttentionOptions& opts = {});

}  // namespace eformer::attention
