// Batches of token windows for training and evaluation.
//
// Training: batch k of a run is `batch_size` random windows of context + 1 tokens from a split;
// inputs = window[:, :-1], targets = window[:, 1:]. The window offsets are a pure function of
// (seed, k) through the counter-based Philox RNG, so a resumed run needs only the step number to
// see exactly the batches it would have seen, and no result depends on the thread count.
//   Offset i of step k: let w = rng::philox(seed, kBatchStream + k, i / 2), x = the 64-bit value
//   w[2*(i%2)] | w[2*(i%2)+1] << 32; offset = floor(x * m / 2^64) with m = n - context the number
//   of window starts of a split of n tokens (Lemire's multiply-shift; its bias is below m / 2^64).
//
// Evaluation: EvalWindows walks a split in non-overlapping windows. Window j has inputs
// tokens[j*C, j*C + L) and targets tokens[j*C + 1, j*C + L + 1) with C = context and L = C except
// for a last, shorter window (L = (n - 1) mod C, present when that is not 0) that comes alone in
// the last batch. So every token from the second to the last is a target exactly once (n - 1
// targets; the first token of a split has no context and is never a target), each window starts
// with no context from the one before, and per-target losses summed over all batches, divided by
// num_targets() * ln 2, give bits per character (per byte).
//
// Records (a Corpus::from_records split, e.g. Fashion-MNIST's images): a window is a whole record
// of R tokens and context must be R - 1. Training batch k draws record indices as the offsets above
// draw window starts (m = the number of records; the offset is R times the index); EvalWindows
// walks the records in order, so every token but each record's first is a target exactly once.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "eformer/core/tensor.h"
#include "eformer/data/corpus.h"

namespace eformer::data {

// Philox stream offset reserved for batch offsets (the step number is added to it), so batch
// draws never coincide with the default generator's streams.
inline constexpr uint64_t kBatchStream = uint64_t(0xDA7A) << 48;

struct Batch {
  Tensor inputs;                 // Int64 [batch, length]
  Tensor targets;                // Int64 [batch, length], inputs shifted left by one token
  std::vector<int64_t> offsets;  // each row's first input token, relative to the split's start
};

// The tokens of one split: a view of a Corpus split (shared, no copy) or a 1-D Int64 tensor of ids.
class TokenSource {
 public:
  TokenSource(const Corpus& corpus, Split split);
  explicit TokenSource(const Tensor& tokens);  // ShapeError unless Int64 and 1-D
  int64_t size() const { return size_; }
  const std::string& name() const { return name_; }  // for messages, e.g. "the valid split of 'kjv.txt'"
  int64_t record_length() const { return record_length_; }  // 0: a text (corpus.h)
  // Copies tokens [offset, offset + length) into `out` as int64.
  void copy(int64_t offset, int64_t length, int64_t* out) const;

 private:
  std::shared_ptr<const void> keep_alive_;
  const uint8_t* bytes_ = nullptr;  // one of bytes_ / ids_ is set
  const int64_t* ids_ = nullptr;
  int64_t size_ = 0;
  int64_t record_length_ = 0;
  std::string name_;
};

// Rows [0, offsets.size()) of inputs/targets [rows, length] from windows of length + 1 tokens
// starting at `offsets` (each window must lie inside the source).
Batch gather_windows(const TokenSource& tokens, std::vector<int64_t> offsets, int64_t length);

// The window offsets of training batch `step`: batch_size values in
// [0, split_size - context - 1], so each window of context + 1 tokens lies inside the split.
std::vector<int64_t> batch_offsets(int64_t split_size, int64_t batch_size, int64_t context, uint64_t seed,
                                   uint64_t step);

// Training batch `step` (inputs and targets [batch_size, context]). ValueError naming the sizes when
// the split holds fewer than context + 1 tokens, or batch_size / context < 1.
Batch sample_batch(const TokenSource& tokens, int64_t batch_size, int64_t context, uint64_t seed,
                   uint64_t step);
// Rows [first, first + count) of training batch `step`: the windows sample_batch gives those rows (one
// rank's share of the global batch in data-parallel training). ValueError when the rows are not inside it.
Batch sample_batch_rows(const TokenSource& tokens, int64_t batch_size, int64_t context, uint64_t seed,
                        uint64_t step, int64_t first, int64_t count);
inline Batch sample_batch(const Corpus& corpus, Split split, int64_t batch_size, int64_t context,
                          uint64_t seed, uint64_t step) {
  return sample_batch(TokenSource(corpus, split), batch_size, context, seed, step);
}

// Sequential evaluation windows (see the top of this file); batch(i) for i in [0, num_batches()).
class EvalWindows {
 public:
  // ValueError when the split has fewer than 2 tokens or context / batch_size < 1.
  EvalWindows(TokenSource tokens, int64_t context, int64_t batch_size = 1);
  int64_t context() const { return context_; }
  int64_t batch_size() const { return batch_size_; }
  int64_t num_windows() const { return num_full_ + (last_length_ > 0 ? 1 : 0); }
  int64_t num_batches() const;
  int64_t num_targets() const;
  // IndexError outside [0, num_batches()).
  Batch batch(int64_t index) const;

 private:
  TokenSource tokens_;
  int64_t context_, batch_size_;
  int64_t stride_;       // from one window's start to the next: context, or the record length
  int64_t num_full_;     // windows of length context
  int64_t last_length_;  // length of the final partial window, 0 when there is none
};

}  // namespace eformer::data
