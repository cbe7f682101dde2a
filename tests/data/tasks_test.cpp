// The LRA-style task generators: ListOps (evaluator on hand-written expressions, the generator's
// lengths, labels and determinism) and Pathfinder (its label checked by a flood fill on the image).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "eformer/data/data.h"

#include "../test_util.h"

namespace eformer::data {
namespace {

using testing::error_of;

int64_t value_of(const std::string& text) { return listops_evaluate(listops_tokenize(text)); }

TEST(ListOps, EvaluatesHandWrittenExpressions) {
  EXPECT_EQ(value_of("7"), 7);
  EXPECT_EQ(value_of("[MAX 2 9 [MIN 4 7 ] 0 ]"), 9);
  EXPECT_EQ(value_of("[MIN 4 7 ]"), 4);
  EXPECT_EQ(value_of("[SM 9 8 7 ]"), 4);           // 24 mod 10
  EXPECT_EQ(value_of("[MED 1 9 3 ]"), 3);
  EXPECT_EQ(value_of("[MED 1 4 9 2 ]"), 3);        // (2 + 4) / 2
  EXPECT_EQ(value_of("[MED 1 4 ]"), 2);            // 2.5 rounded down, as int(np.median)
  EXPECT_EQ(value_of("[SM [MAX 3 8 ] [MIN 6 [MED 5 5 9 ] ] 9 ]"), 2);  // 8 + 5 + 9 = 22
  EXPECT_EQ(value_of("( ( [MAX 2 ) 3 ) ]"), 3);    // LRA's parentheses are dropped
  std::vector<int64_t> padded = listops_tokenize("[MIN 3 5 ]");
  padded.insert(padded.end(), {0, 0, 0});
  EXPECT_EQ(listops_evaluate(padded), 3);
  EXPECT_EQ(listops_text(listops_tokenize("[MAX 2 [SM 4 7 ] ]")), "[MAX 2 [SM 4 7 ] ]");
}

TEST(ListOps, RejectsMalformedExpressions) {
  EXPECT_NE(error_of<ValueError>([] { value_of("[MAX 2 9"); }).find("left open"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { value_of("2 ]"); }).find("follows a complete expression"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { value_of("]"); }).find("closes no operator"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { value_of("[MAX ]"); }).find("no arguments"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { value_of("3 4"); }).find("follows a complete"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { listops_tokenize("[FIRST 1 2 ]"); }).find("unknown word '[FIRST'"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { listops_evaluate({0, 0}); }).find("only padding"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { listops_evaluate({16}); }).find("outside"), std::string::npos);
}

TEST(ListOps, ExamplesHaveTheirLengthLabelAndGrammar) {
  ListOpsOptions o;
  o.min_length = 20, o.max_length = 120;
  std::map<int64_t, int> labels;
  for (uint64_t i = 0; i < 200; ++i) {
    ListOpsExample ex = listops_example(5, i, o);
    ASSERT_GT(int64_t(ex.tokens.size()), o.min_length);
    ASSERT_LT(int64_t(ex.tokens.size()), o.max_length);
    ASSERT_EQ(listops_evaluate(ex.tokens), ex.label) << listops_text(ex.tokens);
    // Grammar: 2..max_args arguments per operator and depth <= max_depth.
    std::vector<int64_t> args;
    int64_t depth = 0, max_depth = 0;
    for (int64_t t : ex.tokens) {
      if (t >= 11 && t <= 14) {
        if (!args.empty()) ++args.back();
        args.push_back(0);
        max_depth = std::max(max_depth, ++depth);
      } else if (t == 15) {
        ASSERT_GE(args.back(), 2);
        ASSERT_LE(args.back(), o.max_args);
        args.pop_back();
        --depth;
      } else if (!args.empty()) {
        ++args.back();
        max_depth = std::max(max_depth, depth + 1);
      }
    }
    ASSERT_LE(max_depth, o.max_depth);
    ++labels[ex.label];
  }
  // Balanced: index mod 10.
  ASSERT_EQ(labels.size(), 10u);
  for (auto [label, count] : labels) EXPECT_EQ(count, 20) << "label " << label;
}

TEST(ListOps, IsAPureFunctionOfSeedAndIndex) {
  ListOpsOptions o;
  o.min_length = 30, o.max_length = 200;
  ListOpsExample a = listops_example(1, 17, o);
  listops_example(1, 3, o);  // other examples in between change nothing
  EXPECT_EQ(listops_example(1, 17, o).tokens, a.tokens);
  EXPECT_NE(listops_example(2, 17, o).tokens, a.tokens);
  EXPECT_NE(listops_example(1, 27, o).tokens, a.tokens);  // same label, another tree
}

TEST(ListOps, DefaultsReachLraLengths) {
  ListOpsExample ex = listops_example(0, 3);
  EXPECT_GT(ex.tokens.size(), 500u);
  EXPECT_LT(ex.tokens.size(), 2000u);
  EXPECT_EQ(listops_evaluate(ex.tokens), 3);
}

TEST(ListOps, RejectsBadOptions) {
  ListOpsOptions o;
  o.min_length = 100, o.max_length = 50;
  EXPECT_NE(error_of<ValueError>([&] { listops_example(0, 0, o); }).find("min_length"), std::string::npos);
  o = {};
  o.max_args = 1;
  EXPECT_NE(error_of<ValueError>([&] { listops_example(0, 0, o); }).find("max_args"), std::string::npos);
  o = {};
  o.max_depth = 1, o.min_length = 2, o.max_length = 10;  // only single digits exist at depth 1
  EXPECT_NE(error_of<ValueError>([&] { listops_example(0, 0, o); }).find("no tree"), std::string::npos);
}

// Connected components over drawn pixels where a step may jump one gap pixel (Chebyshev radius 2),
// independent of the generator's own bookkeeping.
bool flood_connects(const std::vector<uint8_t>& img, int64_t S, int64_t from, int64_t to) {
  std::vector<char> seen(img.size(), 0);
  std::vector<int64_t> stack{from};
  seen[size_t(from)] = 1;
  while (!stack.empty()) {
    int64_t at = stack.back();
    stack.pop_back();
    if (at == to) return true;
    int64_t y = at / S, x = at % S;
    for (int64_t dy = -2; dy <= 2; ++dy)
      for (int64_t dx = -2; dx <= 2; ++dx) {
        int64_t yy = y + dy, xx = x + dx;
        if (yy < 0 || xx < 0 || yy >= S || xx >= S) continue;
        int64_t n = yy * S + xx;
        if (img[size_t(n)] == 0 || seen[size_t(n)]) continue;
        seen[size_t(n)] = 1;
        stack.push_back(n);
      }
  }
  return false;
}

TEST(Pathfinder, LabelIsWhatAFloodFillSees) {
  PathfinderOptions o;
  int labels[2] = {0, 0};
  for (uint64_t i = 0; i < 300; ++i) {
    PathfinderExample ex = pathfinder_example(9, i, o);
    ASSERT_EQ(ex.pixels.size(), 1024u);
    ASSERT_EQ(ex.label, int64_t(i % 2));
    ASSERT_EQ(ex.pixels[size_t(ex.dots[0])], 255);
    ASSERT_EQ(ex.pixels[size_t(ex.dots[1])], 255);
    ASSERT_EQ(flood_connects(ex.pixels, 32, ex.dots[0], ex.dots[1]), ex.label == 1) << "example " << i;
    // Exactly two dots: 18 pixels at the dot level.
    ASSERT_EQ(std::count(ex.pixels.begin(), ex.pixels.end(), 255), 18) << "example " << i;
    ++labels[ex.label];
  }
  EXPECT_EQ(labels[0], 150);
  EXPECT_EQ(labels[1], 150);
}

TEST(Pathfinder, DotDistanceDoesNotGiveTheLabelAway) {
  double sum[2] = {0, 0};
  for (uint64_t i = 0; i < 400; ++i) {
    PathfinderExample ex = pathfinder_example(2, i);
    const int64_t a = ex.dots[0], b = ex.dots[1];
    sum[ex.label] += double(std::max(std::abs(a / 32 - b / 32), std::abs(a % 32 - b % 32)));
  }
  EXPECT_NEAR(sum[0] / 200, sum[1] / 200, 1.0);  // mean Chebyshev distance of the dots per label
}

TEST(Pathfinder, IsAPureFunctionOfSeedAndIndexAndHonoursOptions) {
  PathfinderExample a = pathfinder_example(3, 41);
  pathfinder_example(3, 40);
  EXPECT_EQ(pathfinder_example(3, 41).pixels, a.pixels);
  EXPECT_NE(pathfinder_example(4, 41).pixels, a.pixels);
  PathfinderOptions o;
  o.size = 20, o.min_steps = 4, o.max_steps = 6, o.distractors = 0;
  PathfinderExample small = pathfinder_example(0, 1, o);
  EXPECT_EQ(small.pixels.size(), 400u);
  EXPECT_TRUE(flood_connects(small.pixels, 20, small.dots[0], small.dots[1]));
  o.size = 8;
  EXPECT_NE(error_of<ValueError>([&] { pathfinder_example(0, 0, o); }).find("size"), std::string::npos);
  o = {};
  o.size = 12, o.min_steps = 40, o.max_steps = 48;
  EXPECT_NE(error_of<ValueError>([&] { pathfinder_example(0, 0, o); }).find("no image"), std::string::npos);
}

}  // namespace
}  // namespace eformer::data
