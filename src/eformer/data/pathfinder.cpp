#include "eformer/data/pathfinder.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "eformer/core/error.h"
#include "eformer/data/draws.h"

namespace eformer::data {
namespace {

constexpr uint8_t kPathLevel = 160, kDotLevel = 255;
constexpr int64_t kClearance = 2;  // other paths' pixels must be farther than this (Chebyshev)
constexpr int kPathAttempts = 50, kImageAttempts = 10000;
constexpr int64_t kDotSeparation = 5;  // the two dots of a connected image do not touch
constexpr int64_t kDistanceSlack = 1;  // |dot distance - path 0's end-to-end distance| when not connected

int64_t chebyshev(int64_t a, int64_t b, int64_t S) {
  return std::max(std::abs(a / S - b / S), std::abs(a % S - b % S));
}

struct Canvas {
  int64_t size;
  std::vector<int16_t> owner;  // 0: free; p + 1: pixel of path p (gaps and dots included)

  bool inside(int64_t y, int64_t x, int64_t margin) const {
    return y >= margin && x >= margin && y < size - margin && x < size - margin;
  }
  // No pixel of another path within kClearance of (y, x).
  bool clear(int64_t y, int64_t x, int16_t id) const {
    for (int64_t dy = -kClearance; dy <= kClearance; ++dy)
      for (int64_t dx = -kClearance; dx <= kClearance; ++dx) {
        int64_t yy = y + dy, xx = x + dx;
        if (!inside(yy, xx, 0)) continue;
        int16_t o = owner[yy * size + xx];
        if (o != 0 && o != id) return false;
      }
    return true;
  }
};

// The pixels of one random walk (module comment), or empty when it leaves the border or meets
// another path.
std::vector<int64_t> walk(Draws& draws, const Canvas& canvas, int16_t id, const PathfinderOptions& o) {
  const int64_t S = o.size;
  const int64_t steps = o.min_steps + draws.below(o.max_steps - o.min_steps + 1);
  double y = 1.5 + draws.uniform() * double(S - 4), x = 1.5 + draws.uniform() * double(S - 4);
  double angle = draws.uniform() * 2.0 * M_PI;
  std::vector<int64_t> pixels;
  for (int64_t s = 0; s <= steps; ++s) {
    if (s > 0) {
      angle += (2.0 * draws.uniform() - 1.0) * o.max_turn;
      y += std::sin(angle);
      x += std::cos(angle);
    }
    const int64_t py = std::lround(y), px = std::lround(x);
    if (!canvas.inside(py, px, 1) || !canvas.clear(py, px, id)) return {};
    const int64_t at = py * S + px;
    if (pixels.empty() || pixels.back() != at) pixels.push_back(at);
  }
  return pixels;
}

// The 3 x 3 dot around `centre` is inside and clear of other paths.
bool dot_fits(const Canvas& canvas, int64_t centre, int16_t id) {
  const int64_t y = centre / canvas.size, x = centre % canvas.size;
  for (int64_t dy = -1; dy <= 1; ++dy)
    for (int64_t dx = -1; dx <= 1; ++dx)
      if (!canvas.clear(y + dy, x + dx, id)) return false;
  return true;
}

void claim(Canvas& canvas, int64_t centre, int16_t id, int64_t radius) {
  const int64_t y = centre / canvas.size, x = centre % canvas.size;
  for (int64_t dy = -radius; dy <= radius; ++dy)
    for (int64_t dx = -radius; dx <= radius; ++dx) canvas.owner[(y + dy) * canvas.size + x + dx] = id;
}

}  // namespace

void validate(const PathfinderOptions& o) {
  EF_CHECK(o.size >= 12 && o.size <= 256, ValueError, "pathfinder: size must be 12..256, got ", o.size);
  EF_CHECK(o.min_steps >= 2 && o.min_steps <= o.max_steps && o.max_steps <= 4 * o.size, ValueError,
           "pathfinder: steps must satisfy 2 <= min_steps <= max_steps <= 4 size, got ", o.min_steps, "..",
           o.max_steps, " at size ", o.size);
  EF_CHECK(o.max_turn >= 0 && o.max_turn <= M_PI, ValueError, "pathfinder: max_turn must be in [0, pi], got ",
           o.max_turn);
  EF_CHECK(o.dash >= 1 && o.dash <= 16, ValueError, "pathfinder: dash must be 1..16, got ", o.dash);
  EF_CHECK(o.distractors >= 0 && o.distractors <= 8, ValueError, "pathfinder: distractors must be 0..8, got ",
           o.distractors);
}

PathfinderExample pathfinder_example(uint64_t seed, uint64_t index, const PathfinderOptions& o) {
  validate(o);
  const int64_t S = o.size, paths = 2 + o.distractors;
  PathfinderExample ex;
  ex.label = int64_t(index % 2);
  Draws draws(seed, kPathfinderStream + index);
  for (int image = 0; image < kImageAttempts; ++image) {
    Canvas canvas{S, std::vector<int16_t>(size_t(S * S), 0)};
    std::vector<std::vector<int64_t>> placed;
    for (int16_t p = 0; p < paths; ++p) {
      const int16_t id = int16_t(p + 1);
      // Dots: path 0 has one at its start, and one at its end when connected; else path 1 has one.
      const bool dot_start = p == 0, dot_end = (p == 0 && ex.label == 1) || (p == 1 && ex.label == 0);
      for (int attempt = 0; attempt < kPathAttempts; ++attempt) {
        std::vector<int64_t> pixels = walk(draws, canvas, id, o);
        if (pixels.size() < 2) continue;
        if (dot_start && !dot_fits(canvas, pixels.front(), id)) continue;
        if (dot_end && !dot_fits(canvas, pixels.back(), id)) continue;
        if (dot_start && dot_end && chebyshev(pixels.front(), pixels.back(), S) < kDotSeparation) continue;
        // Not connected: the dots as far apart as path 0's ends, so their distance tells nothing.
        if (p == 1 && dot_end &&
            std::abs(chebyshev(ex.dots[0], pixels.back(), S) - chebyshev(placed[0].front(), placed[0].back(), S)) >
                kDistanceSlack)
          continue;
        for (int64_t at : pixels) canvas.owner[at] = id;
        if (dot_start) claim(canvas, pixels.front(), id, 1), ex.dots[0] = pixels.front();
        if (dot_end) claim(canvas, pixels.back(), id, 1), ex.dots[1] = pixels.back();
        placed.push_back(std::move(pixels));
        break;
      }
      if (int64_t(placed.size()) != p + 1) break;
    }
    if (int64_t(placed.size()) != paths) continue;
    ex.pixels.assign(size_t(S * S), 0);
    for (const auto& pixels : placed)
      for (size_t k = 0; k < pixels.size(); ++k)
        if (int64_t(k % size_t(o.dash + 1)) != o.dash) ex.pixels[pixels[k]] = kPathLevel;
    for (int64_t centre : ex.dots) {
      const int64_t y = centre / S, x = centre % S;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) ex.pixels[(y + dy) * S + x + dx] = kDotLevel;
    }
    return ex;
  }
  throw ValueError("pathfinder: no image placed in " + std::to_string(kImageAttempts) + " attempts at size " +
                   std::to_string(S) + " with " + std::to_string(paths) + " paths of " +
                   std::to_string(o.min_steps) + ".." + std::to_string(o.max_steps) +
                   " steps; shorten the paths or use fewer distractors");
}

}  // namespace eformer::data
