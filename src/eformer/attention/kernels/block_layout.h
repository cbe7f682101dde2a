// The layout of block-sparse attention (kernels/block_sparse.h): which (query block, key block)
// pairs a head computes, and, for pairs only partly attended, the element mask inside the block.
// A mechanism describes its pattern by an element rule allowed(h, i, j) (the exact set: query row i
// of N, key j of M) and, so that building stays far below O(N M), the candidate key blocks of each
// query block (a superset of the blocks the rule touches). build_layout evaluates the rule on the
// candidates only: a block with no allowed element is dropped, one with every element allowed is
// "full" (no mask), any other keeps its mask; equal masks are stored once (a causal diagonal, a
// stride's diagonals). Layouts are cached by a key naming (pattern, N, M, options, seed, block).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace eformer::kernels {

struct BlockSparseLayout {
  int64_t N = 0, M = 0;  // queries, keys (of q and k)
  // The kernel's rows and keys may be a reordered subset of them (a "part" of a pattern, e.g. the
  // keys of one residue class made contiguous): kernel row r is query query_index[r], kernel key c
  // is key key_index[c]; empty = the identity. Each index appears at most once.
  std::vector<int64_t> query_index, key_index;
  int64_t rows = 0, keys = 0;  // the kernel's: query_index.size() (or N), key_index.size() (or M)
  int64_t block = 0;           // rows and columns of a block (the last row / column of blocks may be short)
  int64_t heads = 1;           // 1: every head has the same layout; else one per head
  int64_t nq = 0, nk = 0;      // ceil(rows / block), ceil(keys / block)
  // Row view (forward and dQ): the pairs of head h, query block qb are
  // row_start[h nq + qb] .. row_start[h nq + qb + 1] in row_key_block (ascending) and row_mask.
  std::vector<int64_t> row_start;
  std::vector<int32_t> row_key_block, row_mask;  // mask: -1 = every element allowed, else an index in masks
  // Column view (dK, dV): the pairs of head h, key block kb are col_start[h nk + kb] .. in
  // col_query_block (ascending) and col_mask.
  std::vector<int64_t> col_start;
  std::vector<int32_t> col_query_block, col_mask;
  std::vector<uint8_t> masks;    // [number of masks, block, block], 1 = allowed
  int64_t allowed_elements = 0;  // |pattern| over all heads
  // The dense layout (dense_layout()): every pair, no masks, and no pair lists stored (they would be
  // O(N M / block^2)); the views below compute them.
  bool dense = false;

  // The views as the kernel reads them: pairs row_begin(h, qb) .. row_end(h, qb) with key block
  // row_key(e) and mask row_mask_id(e); col_begin(h, kb) .. col_end(h, kb) with col_query(e), col_mask_id(e).
  int64_t row_begin(int64_t h, int64_t qb) const { return dense ? (h * nq + qb) * nk : row_start[size_t(h * nq + qb)]; }
  int64_t row_end(int64_t h, int64_t qb) const { return row_begin(h, qb + 1); }
  int64_t row_key(int64_t e) const { return dense ? e % nk : row_key_block[size_t(e)]; }
  int32_t row_mask_id(int64_t e) const { return dense ? -1 : row_mask[size_t(e)]; }
  int64_t col_begin(int64_t h, int64_t kb) const { return dense ? (h * nk + kb) * nq : col_start[size_t(h * nk + kb)]; }
  int64_t col_end(int64_t h, int64_t kb) const { return col_begin(h, kb + 1); }
  int64_t col_query(int64_t e) const { return dense ? e % nq : col_query_block[size_t(e)]; }
  int32_t col_mask_id(int64_t e) const { return dense ? -1 : col_mask[size_t(e)]; }
  int64_t masked_pairs() const { return dense ? 0 : int64_t(std::count_if(row_mask.begin(), row_mask.end(), [](int32_t x) { return x >= 0; })); }

  int64_t pairs() const { return dense ? heads * nq * nk : int64_t(row_key_block.size()); }
  bool reordered() const { return !query_index.empty() || !key_index.empty(); }
  const uint8_t* mask(int32_t id) const {
    return id < 0 ? nullptr : masks.data() + size_t(id) * block * block;
  }
  // Fraction of the heads' block pairs that are computed (1 for the dense layout).
  double density() const { return double(pairs()) / double(heads * nq * nk); }
};

// The exact pattern: may query i (of N) attend key j (of M) in head h?
using ElementRule = std::function<bool(int64_t h, int64_t i, int64_t j)>;
// Appends to `out` the key blocks (of size `block`) that query block qb of head h may touch, both in
// the kernel's order; any order, duplicates allowed, blocks outside [0, nk) ignored. Empty function:
// every key block.
using CandidateBlocks = std::function<void(int64_t h, int64_t qb, int64_t block, std::vector<int64_t>& out)>;

// Builds the layout of `heads` head patterns (1 = shared by every head) over N queries and M keys;
// the rule is asked about (h, query_index[r], key_index[c]) for kernel row r and key c (ValueError
// for an index out of range or repeated). Parallel over (head, query block); the result does not
// depend on the thread count.
BlockSparseLayout build_layout(int64_t N, int64_t M, int64_t block, int64_t heads, const ElementRule& allowed,
                               const CandidateBlocks& candidates = {}, std::vector<int64_t> query_index = {},
                               std::vector<int64_t> key_index = {});

// Every (query block, key block) pair of N queries and M keys in blocks of `block`, no element masks:
// exact attention (flash) on the block-sparse kernel. Stores no pair lists (O(1) memory).
BlockSparseLayout dense_layout(int64_t N, int64_t M, int64_t block);

// A pattern as the layouts of its disjoint parts (one for most patterns).
using LayoutParts = std::vector<std::shared_ptr<const BlockSparseLayout>>;
// The layouts cached under `key` (which must name everything they depend on), built by `build` on
// a miss. Thread-safe; keeps the most recently used kLayoutCacheEntries entries.
inline constexpr size_t kLayoutCacheEntries = 64;
LayoutParts cached_layouts(const std::string& key, const std::function<LayoutParts()>& build);
// Layouts in the cache, and built since start (for tests of the cache).
size_t layout_cache_size();
int64_t layouts_built();
void clear_layout_cache();

}  // namespace eformer::kernels
