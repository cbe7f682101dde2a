#include "eformer/data/segments.h"

#include <algorithm>

#include "eformer/core/error.h"
#include "eformer/core/rng.h"

namespace eformer::data {

namespace {
void check_lanes(const char* who, int64_t lanes, int64_t N) {
  EF_CHECK(lanes >= 1, ValueError, who, ": batch_size (lanes) must be >= 1, got ", lanes);
  EF_CHECK(N >= 1, ValueError, who, ": segment length must be >= 1, got ", N);
}

std::vector<int64_t> lane_offsets(int64_t lanes, int64_t lane_length, int64_t start) {
  std::vector<int64_t> offsets(static_cast<size_t>(lanes));
  for (int64_t b = 0; b < lanes; ++b) offsets[size_t(b)] = b * lane_length + start;
  return offsets;
}
}  // namespace

SegmentBatch segment_batch(const TokenSource& tokens, int64_t lanes, int64_t N, uint64_t seed, uint64_t step) {
  check_lanes("segments", lanes, N);
  const int64_t L = (tokens.size() - 1) / lanes;
  EF_CHECK(L >= N, ValueError, "segments: ", tokens.name(), " has ", tokens.size(), " tokens; ", lanes,
           " lanes of segments of ", N, " need at least ", lanes * N + 1);
  const int64_t S = L / N;
  SegmentBatch out;
  out.pass = int64_t(step / uint64_t(S));
  out.index = int64_t(step % uint64_t(S));
  out.starts_pass = out.index == 0;
  // o_p uniform in [0, L - S N] (multiply-shift on a 64-bit Philox draw).
  auto w = rng::philox(seed, kSegmentStream + uint64_t(out.pass), 0);
  const uint64_t x = uint64_t(w[0]) | (uint64_t(w[1]) << 32);
  const int64_t shift = int64_t((unsigned __int128)x * uint64_t(L - S * N + 1) >> 64);
  out.batch = gather_windows(tokens, lane_offsets(lanes, L, shift + out.index * N), N);
  return out;
}

LaneSegments::LaneSegments(TokenSource tokens, int64_t N, int64_t lanes)
    : tokens_(std::move(tokens)), N_(N), lanes_(lanes) {
  check_lanes("evaluation segments", lanes, N);
  lane_length_ = (tokens_.size() - 1) / lanes;
  EF_CHECK(lane_length_ >= 1, ValueError, "evaluation segments: ", tokens_.name(), " has ", tokens_.size(),
           " tokens; ", lanes, " lanes need at least ", lanes + 1);
}

Batch LaneSegments::segment(int64_t i) const {
  EF_CHECK(i >= 0 && i < num_segments(), IndexError, "evaluation segments: segment ", i, " is out of range [0, ",
           num_segments(), ")");
  const int64_t length = std::min(N_, lane_length_ - i * N_);
  return gather_windows(tokens_, lane_offsets(lanes_, lane_length_, i * N_), length);
}

}  // namespace eformer::data
