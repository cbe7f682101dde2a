// Contiguous segments for recurrent-memory training (Transformer-XL, Dai et al. 2019, sec. 3.2):
// each batch lane reads its own stretch of the corpus in order, so the memory a model carries from
// the segment of step k - 1 holds the tokens right before the segment of step k.
//
// Layout of a split of n tokens for `lanes` lanes of segments of N tokens:
//   lane length L = floor((n - 1) / lanes); lane b owns tokens [b L, b L + L] (L inputs, L targets);
//   S = floor(L / N) segments per pass over the lanes. Step k is segment s = k mod S of pass
//   p = floor(k / S); its inputs in lane b are tokens [b L + o_p + s N, ... + N) and its targets the
//   same shifted by one, where o_p in [0, L - S N] is a per-pass shift drawn from Philox
//   (seed, kSegmentStream + p) (Lemire's multiply-shift as batch_offsets), so passes cut the lanes
//   at different places. Everything is a pure function of (seed, step): a resumed run needs the
//   step and the memory (saved in its checkpoint) and nothing else.
// A new pass starts a new stretch: the memory from the previous step does not precede it, and the
// trainer clears the memory when `starts_pass` (the first segment of every pass, step 0 included).
//
// Evaluation (LaneSegments): the same lanes without a shift, read in order in segments of N, the
// last one shorter (L mod N) when N does not divide L; every target of the lanes (lanes L of them)
// is scored exactly once, the last (n - 1) mod lanes targets of the split are not.
#pragma once
#include <cstdint>

#include "eformer/data/batches.h"

namespace eformer::data {

// Philox stream offset reserved for the per-pass shifts (the pass number is added to it).
inline constexpr uint64_t kSegmentStream = uint64_t(0x5E61) << 48;

struct SegmentBatch {
  Batch batch;               // inputs and targets [lanes, N]; offsets = each lane's first input token
  int64_t pass = 0;          // p
  int64_t index = 0;         // s, the segment within the pass
  bool starts_pass = false;  // s == 0: the memory must be cleared before this segment
};

// Training segment `step`. ValueError naming the sizes when a lane cannot hold one segment
// (n - 1 < lanes N) or lanes / N < 1.
SegmentBatch segment_batch(const TokenSource& tokens, int64_t lanes, int64_t N, uint64_t seed, uint64_t step);

// Sequential evaluation segments over `lanes` lanes (see the top of this file).
class LaneSegments {
 public:
  // ValueError when a lane would be empty (n - 1 < lanes) or lanes / N < 1.
  LaneSegments(TokenSource tokens, int64_t N, int64_t lanes);
  int64_t lane_length() const { return lane_length_; }
  int64_t num_segments() const { return (lane_length_ + N_ - 1) / N_; }
  int64_t num_targets() const { return lane_length_ * lanes_; }
  // Segment i in [0, num_segments()): [lanes, N] (the last may be shorter); IndexError outside.
  Batch segment(int64_t i) const;

 private:
  TokenSource tokens_;
  int64_t N_, lanes_, lane_length_;
};

}  // namespace eformer::data
