#include "eformer/data/segments.h"

#include <gtest/gtest.h>

#include <set>

#include "../test_util.h"

namespace eformer::data {
namespace {

using testing::error_of;

// Token i has id i, so a segment's ids are its positions in the split.
TokenSource counting(int64_t n) {
  Tensor t = Tensor::empty({n}, DType::Int64);
  for (int64_t i = 0; i < n; ++i) t.data<int64_t>()[i] = i;
  return TokenSource(t);
}

TEST(Segments, EachLaneReadsItsStretchInOrder) {
  const int64_t n = 1000, lanes = 3, N = 16;
  TokenSource tokens = counting(n);
  const int64_t L = (n - 1) / lanes, S = L / N;
  for (uint64_t step = 0; step < uint64_t(3 * S); ++step) {
    SegmentBatch s = segment_batch(tokens, lanes, N, 7, step);
    EXPECT_EQ(s.index, int64_t(step) % S);
    EXPECT_EQ(s.pass, int64_t(step) / S);
    EXPECT_EQ(s.starts_pass, s.index == 0);
    const int64_t* in = s.batch.inputs.data<int64_t>();
    const int64_t* tg = s.batch.targets.data<int64_t>();
    for (int64_t b = 0; b < lanes; ++b)
      for (int64_t t = 0; t < N; ++t) {
        EXPECT_EQ(tg[b * N + t], in[b * N + t] + 1);
        if (t > 0) {
          EXPECT_EQ(in[b * N + t], in[b * N + t - 1] + 1);
        }
        EXPECT_GE(in[b * N + t], b * L);  // inside lane b
        EXPECT_LE(tg[b * N + t], b * L + L);
      }
    if (!s.starts_pass) {  // contiguous with the previous step's segment, lane by lane
      SegmentBatch prev = segment_batch(tokens, lanes, N, 7, step - 1);
      for (int64_t b = 0; b < lanes; ++b)
        EXPECT_EQ(in[b * N], prev.batch.inputs.data<int64_t>()[b * N + N - 1] + 1);
    }
  }
}

TEST(Segments, PureFunctionOfSeedAndStepWithShiftsPerPass) {
  TokenSource tokens = counting(5000);
  const int64_t N = 10, lanes = 4, S = ((5000 - 1) / lanes) / N;
  std::set<int64_t> shifts;
  for (uint64_t p = 0; p < 20; ++p) {
    SegmentBatch a = segment_batch(tokens, lanes, N, 3, p * uint64_t(S) + 5);
    SegmentBatch b = segment_batch(tokens, lanes, N, 3, p * uint64_t(S) + 5);
    EXPECT_EQ(a.batch.offsets, b.batch.offsets);
    shifts.insert(a.batch.offsets[0] - 5 * N);
  }
  EXPECT_GT(shifts.size(), 1u);  // L - S N = 9 here, so passes do not all cut alike
  EXPECT_NE(segment_batch(tokens, lanes, N, 3, 0).batch.offsets, segment_batch(tokens, lanes, N, 4, 0).batch.offsets);
}

TEST(Segments, TooSmallASplitIsAValueError) {
  TokenSource tokens = counting(20);
  EXPECT_NE(error_of<ValueError>([&] { segment_batch(tokens, 2, 10, 0, 0); }).find("need at least 21"),
            std::string::npos);
  EXPECT_NO_THROW(segment_batch(counting(21), 2, 10, 0, 0));
  EXPECT_THROW(segment_batch(tokens, 0, 10, 0, 0), ValueError);
}

TEST(LaneSegments, ScoresEveryLaneTargetOnce) {
  TokenSource tokens = counting(103);
  LaneSegments segs(tokens, 8, 3);  // L = 34: segments 8, 8, 8, 8, 2
  EXPECT_EQ(segs.lane_length(), 34);
  EXPECT_EQ(segs.num_segments(), 5);
  std::multiset<int64_t> targets;
  for (int64_t i = 0; i < segs.num_segments(); ++i) {
    Batch b = segs.segment(i);
    EXPECT_EQ(b.inputs.size(1), i == 4 ? 2 : 8);
    for (int64_t k = 0; k < b.targets.numel(); ++k) targets.insert(b.targets.data<int64_t>()[k]);
  }
  EXPECT_EQ(int64_t(targets.size()), segs.num_targets());
  for (int64_t t = 1; t <= 102; ++t) EXPECT_EQ(targets.count(t), 1u) << t;
  EXPECT_THROW(segs.segment(5), IndexError);
}

}  // namespace
}  // namespace eformer::data
