// Pathfinder (Linsley et al. 2018, as used by Long Range Arena, Tay et al. 2020): a size x size grey
// image of dashed curved paths and two dots; label 1 when one path joins the two dots, 0 when they
// lie on different paths. Flattened row by row to size^2 tokens (grey levels 0..255: background 0,
// paths 160, dots 255). LRA's images come from Linsley's own generator; this one follows its rules
// at 32 x 32, not its code:
//
// - A path is a random walk of unit steps whose direction turns by a uniform angle in
//   [-max_turn, max_turn] radians each step, from a uniform start point and direction, rounded to
//   pixels (consecutive pixels touch, 8-neighbourhood); its pixels are drawn in dashes of `dash`
//   pixels separated by one-pixel gaps.
// - A dot is the 3 x 3 block centred on an end pixel of a path; the two dots of one path are at
//   Chebyshev distance >= 5 (they never touch).
// - Every pixel of a path or its dots (gaps included) is at Chebyshev distance >= 3 from every
//   pixel of the others, so "connected" is exactly: a flood fill over drawn pixels that may jump
//   gaps of one pixel (8-neighbourhood of radius 2) reaches one dot from the other.
// - Each image has 2 + distractors paths and 2 dots. Connected: both dots on the ends of path 0.
//   Not connected: one dot on the start of path 0, the other on the end of path 1, at a Chebyshev
//   distance within 1 of path 0's own end-to-end distance. So neither the count of paths, dots and
//   drawn pixels nor the distance between the dots gives the label away.
//
// Example `index` is a pure function of (seed, index) (stream kPathfinderStream + index, draws.h);
// its label is index mod 2 (balanced, chance 50%). Paths that leave the 1-pixel border or come
// too close to another are redrawn.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace eformer::data {

inline constexpr uint64_t kPathfinderStream = uint64_t(0x9A7F) << 48;
inline constexpr int64_t kPathfinderVocab = 256;

struct PathfinderOptions {
  int64_t size = 32;        // image side: sequences of size^2 tokens
  int64_t min_steps = 10;   // path length in unit steps, uniform in [min_steps, max_steps]
  int64_t max_steps = 18;
  double max_turn = 0.5;    // radians per step
  int64_t dash = 2;         // drawn pixels per dash (then one gap pixel)
  int64_t distractors = 1;  // paths without dots
};
// ValueError unless 12 <= size <= 256, 2 <= min_steps <= max_steps <= 4 size, 0 <= max_turn <= pi,
// 1 <= dash <= 16, 0 <= distractors <= 8.
void validate(const PathfinderOptions& options);

struct PathfinderExample {
  std::vector<uint8_t> pixels;          // size * size, row-major
  int64_t label = 0;                    // 1: the dots are joined by a path
  std::array<int64_t, 2> dots{};        // the dots' centres as y * size + x
};

// ValueError naming the options when 10^4 attempts place no image (paths too long for the size).
PathfinderExample pathfinder_example(uint64_t seed, uint64_t index, const PathfinderOptions& options = {});

}  // namespace eformer::data
