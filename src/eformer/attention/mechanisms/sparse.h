// The block-sparse family: softmax attention restricted to a fixed, structured pattern, computed by
// the one block-sparse kernel (kernels/block_sparse.h) over a cached layout. Each mechanism is an
// element rule (its exact set, from the paper) plus the candidate blocks that make building the
// layout cheap; everything else (projections, options, the functional and pattern forms, the
// layout cache, dropout, padding) is shared here.
//
//   sparse_strided  Child et al. 2019, sec. 4: A1 = {j : i - l < j <= i}, A2 = {j : (i - j) mod l = 0}
//   sparse_fixed    Child et al. 2019, sec. 4: A1 = {j : floor(j/l) = floor(i/l)},
//                   A2 = {j : j mod l in {l - c, ..., l - 1}}
//   longformer      Beltagy et al. 2020: dilated sliding window of w (w/2 each side), symmetric global
//   bigbird         Zaheer et al. 2020: blocks of b, window of 3 blocks, g global blocks, r random blocks
//   local           Parmar et al. 2018 (Image Transformer), 1-D: query blocks attend their memory block
//
// Streaming (causal): a KV cache; each step attends the new queries to their pattern's cached keys.
//
// Positions: query row i of N sits at position p = i + M - N (bottom-right aligned, as the causal
// rule of options.h), so a KV cache or the streaming fallback sees the same pattern as the parallel
// pass. The bidirectional pattern is the paper's set without the j <= p cut (windows extend both
// ways); the causal pattern is the bidirectional one intersected with {j <= p}.
// Options are the mechanism's own (docs/MECHANISMS.md) plus rotary / rotary_base for the module.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/attention/projected.h"
#include "eformer/attention/registry.h"

namespace eformer::attention {

// A part of a pattern computed in its own order: kernel row r is query query_index[r] and kernel
// key c is key key_index[c] (empty: the identity), so that a set scattered in the natural order
// (strided's diagonals, fixed's summary columns) fills whole blocks. `allowed` is in q/k indices,
// `candidates` in the part's kernel order.
struct SparsePart {
  kernels::ElementRule allowed;
  kernels::CandidateBlocks candidates;
  std::vector<int64_t> query_index, key_index;
};

// One pattern over N queries and M keys: `heads` distinct head patterns (head h uses h % heads),
// the exact element rule (query row i, key j) and the candidate key blocks of a query block; or,
// when `parts` is not empty, the same set as disjoint parts (their union is `allowed`).
struct SparsePattern {
  int64_t heads = 1;
  kernels::ElementRule allowed;
  kernels::CandidateBlocks candidates;
  std::vector<SparsePart> parts;
};

// A mechanism's parsed options: `key` names them canonically (for the layout cache); make() builds
// the pattern for the sizes, the head count, causal and the seed (ValueError when the options do
// not fit them, e.g. a per-head list of the wrong length).
struct SparsePatternMaker {
  std::string key;
  std::function<SparsePattern(int64_t N, int64_t M, int64_t heads, bool causal, uint64_t seed)> make;
};

// Parses a mechanism's own options (every key of `options`; an unknown one is the ValueError of
// options::unknown listing `valid`). `who` prefixes messages ("attention 'bigbird'").
using SparseOptionParser = std::function<SparsePatternMaker(
    const std::string& who, const nlohmann::json& options, const std::vector<OptionSpec>& valid)>;

struct SparseSpec {
  std::string name, description;
  std::vector<OptionSpec> options;  // its own options (the multi-head ones are added)
  SparseOptionParser parse;
};

// The registry entry of a block-sparse mechanism: reference "softmax-pattern", causal and
// bidirectional, padding mask, dropout; a native streaming step over a KV cache (the new queries
// attend only their pattern's keys: the layout of (T new queries, M cached keys) at positions
// M - T .. M - 1, built per step without the cache).
MechanismEntry sparse_entry(const SparseSpec& spec);

// The entries (their patterns are defined in sparse_patterns.cpp).
MechanismEntry sparse_strided_entry();
MechanismEntry sparse_fixed_entry();
MechanismEntry longformer_entry();
MechanismEntry bigbird_entry();
MechanismEntry local_entry();

// The layouts (one per part) of `maker` for these sizes, from the layout cache (built on a miss);
// cache = false builds them without touching the cache (a streaming step's sizes change every call).
kernels::LayoutParts sparse_layout(const SparsePatternMaker& maker, int64_t N, int64_t M, int64_t heads,
                                   bool causal, uint64_t seed, int64_t block = kernels::block_sparse_block(),
                                   bool cache = true);

// The layouts of block-sparse mechanism `name` (ValueError for other names) with its options
// `args`, for benchmarks and inspection (eformer.attention_layout in Python).
kernels::LayoutParts sparse_layout_of(const std::string& name, int64_t N, int64_t M, int64_t heads,
                                      bool causal, const MechanismArgs& args = {}, uint64_t seed = 0);

class SparseAttention : public ProjectedAttention {
 public:
  SparseAttention(const SparseSpec& spec, const MechanismConfig& config);
  std::string describe() const override;
  // What this layer adds to the seed option of a random pattern: its layer index (0 standalone), so
  // the layers of a model draw different random blocks.
  uint64_t layer_seed() const { return layer_seed_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  SparsePatternMaker maker_;
  uint64_t layer_seed_;
};

// Helpers for the patterns: floor division and a non-negative remainder (positions may be < 0
// when N > M).
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t mod_floor(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

}  // namespace eformer::attention
