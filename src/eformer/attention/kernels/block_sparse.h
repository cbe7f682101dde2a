// Block-sparse softmax attention: the fused, tiled online-softmax kernel of flash.h run over a
// layout (block_layout.h) instead of every tile: per head, only the (query block, key block) pairs
// of the layout are computed, each with its element mask where the pattern does not fill it
// (diagonals, strides, windows that do not align to blocks). One kernel serves every sparse
// pattern (Sparse Transformer strided and fixed, Longformer, BigBird, local blocks); the dense
// layout is exact attention. The forward saves O and the row log-sum-exp L; the backward recomputes
// score tiles from q, k and L: memory is O(N d) plus the layout, never O(N M).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "eformer/attention/kernels/block_layout.h"
#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/options.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

// q [B, H, N, d], k and v [B, H, M, d] float32 -> [B, H, N, d] = softmax(scale q k^T) v over the
// keys the layout allows (head h uses layout head h % layout->heads), further restricted by
// opts.key_mask and, when opts.causal, by j <= i + M - N. A query row with no attendable key gives
// 0 and receives zero gradients. opts.dropout > 0 drops exactly the elements full_attention would
// drop from the same generator state (it reserves the counters of the dense [B, H, N, M]).
// ShapeError when the layout's N, M or heads do not fit q and k.
Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout);
// The same over a pattern given as disjoint parts, each a layout that may reorder rows and keys
// (block_layout.h): the softmax runs over the union of the parts' keys. Each part's O and L are
// folded into the union's by their log-sum-exp; the backward runs each part with the union's O
// and L and adds the gradients part by part in order. A reordered part's kernel does not apply
// opts.causal (its rule must carry it).
Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              const std::vector<std::shared_ptr<const kernels::BlockSparseLayout>>& parts);

// A learned score bias by relative position label (ETC, Ainslie et al. 2020): the score of
// query i and key j in head h becomes scale q_i k_j + table[h, label(i, j)] (kernels::RelativeLabels).
struct RelativeScoreBias {
  Tensor table;              // [H, labels] float32; differentiable (its gradient is the sum of dS per label)
  int64_t max_distance = 0;  // k: distances clipped to [-k, k]
  int64_t globals = 0;       // positions < globals are global tokens
};
// The same over one layout in q/k order (not reordered), with the bias added to every score.
Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout,
                              const RelativeScoreBias& bias);

// The Transformer-XL position term as the score bias (kernels::PositionScores): the score of query i
// and key j of head h is scale (q_i^T k_j + qw_i^T r_{h, p}), p = N - 1 - i + j the row of r for the
// distance i + M - N - j. qw [B, H, N, d], r [H, M, d]; differentiable in q, k, v, qw and r.
struct PositionScoreBias {
  Tensor qw, r;
};
// The same with that bias, causal (opts.causal must be set), over a layout in q/k order whose every
// block is full (no element masks; the causal cut is the kernel's).
Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                              std::shared_ptr<const kernels::BlockSparseLayout> layout,
                              const PositionScoreBias& bias);

}  // namespace eformer::attention

namespace eformer::kernels {

// The labels of a relative score bias: within the global tokens (i, j < globals) and within the
// long input (i, j >= globals), clip(j - i, -k, k) + k; global-to-long 2k + 1, long-to-global 2k + 2.
struct RelativeLabels {
  int64_t max_distance = 0, globals = 0;
  int64_t count() const { return 2 * max_distance + 3; }
  int32_t operator()(int64_t i, int64_t j) const {
    const bool gi = i < globals, gj = j < globals;
    if (gi != gj) return int32_t(2 * max_distance + (gi ? 1 : 2));
    const int64_t dist = j - i < -max_distance ? -max_distance : (j - i > max_distance ? max_distance : j - i);
    return int32_t(dist + max_distance);
  }
};
// A bias table [H, labels.count()] and its labels, as the kernels take it.
struct ScoreBiasTable {
  const float* table = nullptr;
  RelativeLabels labels;
};

// The Transformer-XL position term (Dai et al. 2019, sec. 3.3, terms (b) + (d)) as a score bias:
// kernel row i and key j of head h get scale qw_i^T r_p with qw_i = q_i + w and p = rows - 1 - i + j
// the row of r for the distance i + keys - rows - j (p > keys - 1 only where the causal cut masks).
// Per tile it is one GEMM of the tile's rows of qw against the rows + cols - 1 rows of r its
// distances need, read back along the relative shift as an index: no rows x keys buffer.
struct PositionScores {
  const float* qw = nullptr;  // [B*H, rows, d]
  const float* r = nullptr;   // [H, keys, d]
};

// The block size the mechanisms build their layouts with (flash's dense layout uses kFlashBlock;
// docs/BENCHMARKS.md, block size).
inline constexpr int64_t kBlockSparseBlock = 64;
// The block size in use: kBlockSparseBlock, or EFORMER_SPARSE_BLOCK (an integer >= 1, read once; for
// measuring other sizes, docs/BENCHMARKS.md).
int64_t block_sparse_block();

// The number of key-block groups of the backward: enough (batch, head, group) items to keep
// kBackwardItems threads busy at B H = 1 (the causal triangle's columns are unequal), at most
// kMaxBackwardGroups and nk; a function of B H and nk only, never of the thread count.
inline constexpr int64_t kBackwardItems = 4;
inline constexpr int64_t kMaxBackwardGroups = 8;
inline int64_t backward_groups(int64_t BH, int64_t nk) {
  const int64_t want = (kBackwardItems + BH - 1) / std::max<int64_t>(BH, 1);
  return std::max<int64_t>(1, std::min({want, kMaxBackwardGroups, nk}));
}

// q [B*H, N, d], k, v [B*H, M, d], key_mask [B, M] or null, out [B*H, N, d], lse [B*H, N]
// (+inf on a row with no attendable key); dropout null = none. Parallel over (b, h, query block),
// longest rows first; each output row is computed by one thread in a fixed order.
void block_sparse_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask,
                                    float* out, float* lse, int64_t B, int64_t H, int64_t d, float scale,
                                    bool causal, const BlockSparseLayout& layout,
                                    const FlashDropout* dropout = nullptr, const ScoreBiasTable* bias = nullptr,
                                    const PositionScores* position = nullptr);

// Inputs as above plus out, lse (the forward's) and dout [B*H, N, d]; writes dq [B*H, N, d], dk,
// dv [B*H, M, d]. With D_i = rowsum(dO o O) and, per pair, P = exp(S - L), dS = P o (dP o Z - D)
// with dP = dO_i V_j^T: dV = (P o Z)^T dO, dK = scale dS^T Q and dQ = scale dS K (5 tile products
// per pair) in one pass parallel over (b, h, key-block group): G = backward_groups(B H, nk) groups,
// key block kb in group kb mod G, each group adding into its own dQ partial [B*H, N, d] (group 0
// into dq itself: memory (G - 1) B H N d floats), summed in group order afterwards. Every element is summed in an order fixed by
// the layout and G: bits do not depend on the thread count.
// With a bias (a layout in q/k order), dbias [H, labels] receives the sum of dS per head and label,
// summed per key block and then over (batch, key block) in order.
// With a position term (causal, every block full), G = 1: dqw [B*H, N, d] = scale sum_j dS_ij r_p(i,j)
// alongside dQ, and dr [H, M, d] = scale sum_{p(i,j) = p} dS_ij qw_i in a second pass parallel
// over (b, h, block diagonal) (a diagonal's tiles need the same 2 block - 1 rows of r), each into its
// own rows, then summed over (batch, diagonal) in order.
void block_sparse_attention_backward(const float* q, const float* k, const float* v, const bool* key_mask,
                                     const float* out, const float* lse, const float* dout, float* dq,
                                     float* dk, float* dv, int64_t B, int64_t H, int64_t d, float scale,
                                     bool causal, const BlockSparseLayout& layout,
                                     const FlashDropout* dropout = nullptr, const ScoreBiasTable* bias = nullptr,
                                     float* dbias = nullptr, const PositionScores* position = nullptr,
                                     float* dqw = nullptr, float* dr = nullptr);

}  // namespace eformer::kernels
